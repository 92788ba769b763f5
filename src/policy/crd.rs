//! The `ImagePolicy` custom resource (`imagegate.dev/v1alpha1`), the one Kubernetes wire type
//! that imagegate defines itself. The CRD YAML in `crds/imagepolicy.yaml` is generated from it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use crate::signature::TransparencyLog;

/// Group of the ImagePolicy API.
pub const GROUP: &str = "imagegate.dev";
/// Version of the ImagePolicy API.
pub const VERSION: &str = "v1alpha1";

/// An ImagePolicy decides which container images Pods may run: by registry and repository, by
/// tag, by digest pinning and by pull policy, with audited break-glass exceptions. Policies
/// compose by intersection: an object is denied when any applying Enforce policy has a violation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "imagegate.dev",
    version = "v1alpha1",
    kind = "ImagePolicy",
    plural = "imagepolicies",
    shortname = "imgpol",
    status = "ImagePolicyStatus",
    doc = "An ImagePolicy decides which container images Pods may run: by registry and repository, by tag, by digest pinning and by pull policy, with audited break-glass exceptions.",
    printcolumn = r#"{"name":"Mode","type":"string","description":"Enforce, Warn or Audit","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","description":"Whether the policy compiled and is in force","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Violations","type":"integer","description":"Running Pods that violate the policy, as the last audit found","jsonPath":".status.audit.violatingPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "has(self.allowedImages) || has(self.deniedImages) || has(self.requireDigest) || has(self.deniedTags) || has(self.requirePullPolicyAlways) || (has(self.verifySignatures) && size(self.verifySignatures) > 0) || has(self.setPullPolicyAlways) || has(self.pinDigests)"
).message("set at least one rule: allowedImages, deniedImages, requireDigest, deniedTags, requirePullPolicyAlways, verifySignatures, setPullPolicyAlways or pinDigests"))]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicySpec {
    /// What a violation does. Enforce denies the object; Warn admits it and returns a warning to
    /// the client; Audit admits it and only records the violation (logs, metrics, audit
    /// annotations). Default Enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,

    /// Selects the namespaces whose workloads this policy applies to, by the namespace's labels
    /// (every namespace carries `kubernetes.io/metadata.name: <name>`). Omitted: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Which images this policy governs, as image patterns (for example `docker.io/**` or
    /// `registry.corp.example/team/*`). `*` matches within one path component, `**` across
    /// components, `?` one character; a pattern starts with a registry host, or is `**`, and may
    /// end in `:TAG-PATTERN` or `@sha256:DIGEST`. Omitted or empty: `["**"]`, every image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 1024)))]
    pub images: Option<Vec<String>>,

    /// When set, each governed image must match at least one of these patterns (same syntax as
    /// `images`). Must not be empty: omit it to allow every image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), inner(length(min = 1, max = 1024)))]
    pub allowed_images: Option<Vec<String>>,

    /// No governed image may match any of these patterns (same syntax as `images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), inner(length(min = 1, max = 1024)))]
    pub denied_images: Option<Vec<String>>,

    /// When true, each governed image must be pinned by digest (`@sha256:…`, `@sha384:…` or
    /// `@sha512:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_digest: Option<bool>,

    /// Tags that governed images may never use, case-sensitive, with `*` and `?` wildcards. A
    /// reference with neither tag nor digest has the tag `latest`. A digest-pinned reference is
    /// never judged by its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 128)))]
    pub denied_tags: Option<Vec<String>>,

    /// When true, governed images that are not pinned by digest must be pulled with
    /// `imagePullPolicy: Always` (an absent pull policy counts as Kubernetes defaults it:
    /// `Always` for `latest` or no tag, `IfNotPresent` otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_pull_policy_always: Option<bool>,

    /// Signatures that governed images must carry: an image passes when at least one entry
    /// whose `images` match it verifies a signature over the image's digest (any of). An image
    /// that no entry matches is not subject to this rule. Omitted or empty: no signature rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))").message("entry names must be unique within verifySignatures"))]
    pub verify_signatures: Option<Vec<SignatureEntry>>,
    /// When true, imagegate's mutating webhook sets `imagePullPolicy: Always` on every
    /// container of a new Pod whose image this policy governs (init, sidecar and ephemeral
    /// containers too), and `pullPolicy: Always` on its image volumes, as the API server's
    /// `AlwaysPullImages` plugin does, but scoped by this policy: a node's cached copy of a
    /// private image is then never used without the credentials to pull it. Pinned images get
    /// it too. Only Pods are changed, never workload templates; Warn and Audit policies change
    /// nothing and report what they would change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_pull_policy_always: Option<bool>,

    /// When true, imagegate's mutating webhook rewrites every governed image of a new Pod that
    /// is referred to by tag to `REPO:TAG@sha256:DIGEST`: the digest `verifySignatures` verified
    /// for it when that rule applies, else the digest the registry serves for the tag now. An
    /// image whose digest cannot be had is left as written, with a warning. Only Pods are
    /// changed, never workload templates; Warn and Audit policies change nothing and report
    /// what they would change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_digests: Option<bool>,

    /// Who may override this policy's violations in an emergency, with the annotations
    /// `imagegate.image-policy.k8s.io/break-glass: <ticket>` and
    /// `imagegate.image-policy.k8s.io/break-glass-until: <RFC 3339 time>`. Omitted: this policy
    /// honours no exception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
}

/// What a violation of a policy does.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
pub enum Mode {
    /// Deny the object.
    #[default]
    Enforce,
    /// Admit the object and return a warning to the client.
    Warn,
    /// Admit the object and only record the violation.
    Audit,
}

impl Mode {
    /// The mode's name as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "Enforce",
            Mode::Warn => "Warn",
            Mode::Audit => "Audit",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may override a policy in an emergency, and for how long.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlass {
    /// The requester must be in one of these groups, or be one of `allowedUsers`. Both empty:
    /// any requester.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_groups: Vec<String>,

    /// The requester must be one of these users, or in one of `allowedGroups`. Both empty: any
    /// requester.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,

    /// A regular expression (Rust regex syntax) that the whole value of the break-glass
    /// annotation must match, for example `^INC-[0-9]+$`.
    #[schemars(length(min = 1, max = 1024))]
    pub ticket_pattern: String,

    /// The furthest a `break-glass-until` time may lie ahead of the moment of admission, in
    /// hours, minutes and seconds (`24h`, `1h30m`, `90m`). Default `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    #[x_kube(validation = Rule::new("self != ''").message("maxDuration must not be empty: omit it for the default of 24h"))]
    pub max_duration: Option<String>,
}

/// What imagegate observed of a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicyStatus {
    /// The `metadata.generation` that the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` is True when the policy compiled and is in force, and False with the compile error
    /// (and its field path) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// What the last audit of running Pods found. Written by the audit with its own field
    /// manager (`imagegate-audit`), so that it and the conditions never remove each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditStatus>,
}

/// The most violations `status.audit.violations` lists.
pub const AUDIT_VIOLATIONS_LIMIT: usize = 20;

/// What the audit of running Pods found for one policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    /// When the audit last wrote this status: when what it found last changed, and at least
    /// once per audit interval while imagegate runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_audit_time: Option<Time>,

    /// Running Pods in the namespaces this policy applies to.
    #[serde(default)]
    pub pods_evaluated: i64,

    /// Those with at least one violation of this policy that no valid break-glass exception
    /// covers.
    #[serde(default)]
    pub violating_pods: i64,

    /// Pods with an image this policy governs whose node reports only a local image ID (an
    /// image built or loaded on the node, without a registry digest), so what runs could not be
    /// compared with what the Pod names.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_with_local_images: i64,

    /// Up to 20 violations, in order of namespace, workload (or Pod), container and rule; the
    /// replicas of one workload with the same violation are listed once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub violations: Vec<AuditViolation>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One violation found by the audit.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditViolation {
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name (for a workload's replicas, the first in order).
    pub pod: String,
    /// The Pod's controller (or first owner) as `Kind/name`; absent for a Pod without owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `containers`, `initContainers`, `ephemeralContainers` or `imageVolumes`.
    pub container_type: String,
    /// The container's name (the volume's name for an image volume).
    pub container: String,
    /// The image as the Pod names it.
    pub image: String,
    /// The rule broken: a policy field, `breakGlass`, or `runningDigest`.
    pub rule: String,
    /// What failed and what would pass.
    pub message: String,
}

/// One entry of `verifySignatures`: which images it is for and how their signatures must
/// verify.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.key) != has(self.keyless)").message("set exactly one of key and keyless"))]
pub struct SignatureEntry {
    /// The entry's name, unique in the policy: lower-case letters, digits and `-`, at most 63
    /// characters. Named in messages, decision records and metrics (as `POLICY/NAME`).
    // The length bound also keeps the API server's cost estimate of the uniqueness rule low.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    pub name: String,

    /// Which of the policy's governed images this entry is for, as image patterns (the syntax
    /// of `spec.images`). Omitted: `["**"]`, every governed image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), inner(length(min = 1, max = 1024)))]
    pub images: Option<Vec<String>>,

    /// A cosign key pair: the signature must verify under its public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyVerifier>,

    /// A Sigstore keyless signature: made under a Fulcio certificate from the trusted root whose
    /// OIDC issuer and subject match, valid when the signature was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyless: Option<KeylessVerifier>,

    /// Whether a transparency-log (Rekor) entry for the signature must be present and verify
    /// against the trusted root's log keys. Default `Skip` with `key` and `Require` with
    /// `keyless`. A `key` entry with `Require` uses the trusted root imagegate was started with
    /// (`--sigstore-trusted-root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparency_log: Option<TransparencyLog>,
}

/// The public key of a cosign key pair: exactly one of `publicKey` and `secretRef`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.publicKey) != has(self.secretRef)").message("set exactly one of publicKey and secretRef"))]
pub struct KeyVerifier {
    /// The public key in PEM (`-----BEGIN PUBLIC KEY-----`, PKIX): ECDSA P-256 or P-384,
    /// Ed25519, or RSA of 2048 to 8192 bits, as `cosign generate-key-pair` writes `cosign.pub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16384))]
    pub public_key: Option<String>,

    /// A key of a Secret in imagegate's own namespace that holds the PEM public key. The
    /// operator may read only the Secrets it is told to (Helm value `signatures.keySecrets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// A key of a Secret in imagegate's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the Secret's data, for example `cosign.pub`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A Sigstore keyless identity: exactly one of `issuer` and `issuerRegExp`, and exactly one of
/// `subject` and `subjectRegExp`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.issuer) != has(self.issuerRegExp)").message("set exactly one of issuer and issuerRegExp"))]
#[x_kube(validation = Rule::new("has(self.subject) != has(self.subjectRegExp)").message("set exactly one of subject and subjectRegExp"))]
pub struct KeylessVerifier {
    /// The OIDC issuer the signing certificate must carry, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer: Option<String>,

    /// A regular expression (Rust regex syntax) that the whole OIDC issuer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub issuer_reg_exp: Option<String>,

    /// The identity (subject) the signing certificate must carry, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject: Option<String>,

    /// A regular expression (Rust regex syntax) that the whole identity must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub subject_reg_exp: Option<String>,

    /// The Sigstore trusted root (`trusted_root.json`) to verify certificates, log entries and
    /// timestamps against. Omitted: the root imagegate was started with
    /// (`--sigstore-trusted-root`, usually Sigstore's public instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_root: Option<TrustedRoot>,
}

/// Where a Sigstore trusted root is kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrustedRoot {
    /// A key of a ConfigMap in imagegate's namespace holding the trusted root JSON. The operator
    /// may read only the ConfigMaps it is told to (Helm value `signatures.trustedRootConfigMaps`).
    pub config_map_ref: ConfigMapKeyRef,
}

/// A key of a ConfigMap in imagegate's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in the ConfigMap's data, for example `trusted_root.json`.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}
