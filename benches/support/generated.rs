//! Generated policies for the scale benchmarks (`benches/snapshot.rs`, `benches/decision.rs`)
//! and the reload script (`benches/reload.sh`, through `examples/generate_policies.rs`): a
//! multi-tenant cluster with one policy per team, as a platform team generates them.
//!
//! Two shapes, as in the sizing table of `docs/operations.md`:
//!
//! - **3 patterns**: `allowedImages` with the team's part of the company registry, its GitHub
//!   organisation and one shared base image; `deniedTags` `latest` and `*-dev`; break-glass.
//! - **100 patterns**: `images` (2), `allowedImages` (90) and `deniedImages` (8). Five of the
//!   allowed patterns are the same in every policy (shared base images); the other 95 are the
//!   team's own, in every form a pattern can take: literal repositories, `*` and `?` within a
//!   component, a trailing `/**`, a `/**/` in the middle, tag suffixes and digest suffixes.
//!
//! Either shape can also verify signatures ([`signed`]): two `verifySignatures` entries per
//! policy, `release` for the team's own images (two patterns of its own) and `base` for every
//! image the policy governs, each under a key that every policy names.

#![allow(dead_code)] // each including target uses a part

use imagegate::policy::{
    BreakGlass, ImagePolicy, ImagePolicySpec, KeyVerifier, Mode, SignatureEntry,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The patterns every 100-pattern policy allows: base images shared by all teams.
pub const SHARED: [&str; 5] = [
    "docker.io/library/alpine:3.*",
    "gcr.io/distroless/**",
    "registry.k8s.io/**",
    "*.mirror.corp.example/library/*",
    "quay.io/prometheus/*:v*",
];

/// Policy `i` of a generated cluster, with `patterns` patterns (3 or 100).
pub fn policy(i: usize, patterns: usize) -> ImagePolicy {
    let mut spec = ImagePolicySpec {
        mode: Some(Mode::Enforce),
        namespace_selector: Some(LabelSelector {
            match_labels: Some([("team".to_owned(), format!("t{i}"))].into()),
            ..LabelSelector::default()
        }),
        break_glass: Some(BreakGlass {
            allowed_groups: vec!["sre-oncall".to_owned()],
            allowed_users: Vec::new(),
            ticket_pattern: "INC-[0-9]+".to_owned(),
            max_duration: Some("8h".to_owned()),
        }),
        ..ImagePolicySpec::default()
    };
    if patterns <= 3 {
        spec.allowed_images = Some(vec![
            format!("registry.corp.example/team-{i}/*"),
            format!("ghcr.io/corp/team-{i}/**"),
            "docker.io/library/nginx:1.*".to_owned(),
        ]);
        spec.denied_tags = Some(vec!["latest".to_owned(), "*-dev".to_owned()]);
    } else {
        spec.images = Some(vec![
            format!("registry.corp.example/team-{i}/**"),
            format!("ghcr.io/corp/team-{i}/**"),
        ]);
        let mut allowed: Vec<String> = SHARED.iter().map(|s| (*s).to_owned()).collect();
        allowed.extend((0..85).map(|j| own_pattern(i, j)));
        spec.allowed_images = Some(allowed);
        spec.denied_images = Some(
            (0..8)
                .map(|j| format!("registry.corp.example/team-{i}/legacy-{j}"))
                .collect(),
        );
        spec.denied_tags = Some(vec!["latest".to_owned()]);
        spec.require_digest = Some(i.is_multiple_of(2));
    }
    ImagePolicy::new(&format!("team-{i}"), spec)
}

/// The team's own pattern `j`: every form a pattern can take, in turn.
fn own_pattern(i: usize, j: usize) -> String {
    match j % 8 {
        0 => format!("registry.corp.example/team-{i}/service-{j}"),
        1 => format!("registry.corp.example/team-{i}/service-{j}:v{j}.*"),
        2 => format!("registry.corp.example/team-{i}/service-{j}/*"),
        3 => format!("ghcr.io/corp/team-{i}/job-{j}/**"),
        4 => format!("registry.corp.example/team-{i}/**/tool-{j}"),
        5 => format!("registry.corp.example/team-{i}/batch-{j}-*"),
        6 => format!(
            "registry.corp.example/team-{i}/pinned-{j}@sha256:{:064x}",
            i * 1000 + j
        ),
        _ => format!("quay.io/team-{i}/app-?{j}"),
    }
}

/// `n` policies of the given shape.
pub fn policies(n: usize, patterns: usize) -> Vec<ImagePolicy> {
    (0..n).map(|i| policy(i, patterns)).collect()
}

/// How many patterns `policies(n, patterns)` has in all.
pub fn pattern_count(n: usize, patterns: usize) -> usize {
    n * if patterns <= 3 { 3 } else { 100 }
}

/// The patterns of the entries [`signed`] adds to each policy.
pub const SIGNED_PATTERNS: usize = 2;

/// Policy `i` as [`policy`] makes it, verifying signatures: entry `release` for the team's own
/// images (`SIGNED_PATTERNS` patterns), entry `base` for every image the policy governs.
pub fn signed(i: usize, patterns: usize) -> ImagePolicy {
    let mut p = policy(i, patterns);
    let key = |pem: &str| KeyVerifier {
        public_key: Some(pem.to_owned()),
        ..KeyVerifier::default()
    };
    p.spec.verify_signatures = Some(vec![
        SignatureEntry {
            name: "release".to_owned(),
            images: Some(vec![
                format!("registry.corp.example/team-{i}/**"),
                format!("ghcr.io/corp/team-{i}/**"),
            ]),
            key: Some(key(include_str!("../../tests/data/keys/p256.pub"))),
            ..SignatureEntry::default()
        },
        SignatureEntry {
            name: "base".to_owned(),
            key: Some(key(include_str!("../../tests/data/keys/ed25519.pub"))),
            ..SignatureEntry::default()
        },
    ]);
    p
}

/// `n` policies of the given shape, each verifying signatures ([`signed`]).
pub fn signed_policies(n: usize, patterns: usize) -> Vec<ImagePolicy> {
    (0..n).map(|i| signed(i, patterns)).collect()
}
