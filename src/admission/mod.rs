//! The protocol adapters between the API server and the decision engine, free of any HTTP
//! framework: `AdmissionReview v1` for validation ([`review`]) and for mutation ([`mutate`]),
//! the legacy plugin's `ImageReview v1alpha1` ([`image_review`]), plus the decision record
//! ([`record`]).
//!
//! Each adapter reads a request body into a typed request (or a [`BadRequest`], answered with
//! HTTP 4xx), decides, and writes the answer. A request that parses but whose object cannot be
//! read is denied with the reason: fail closed.

pub mod image_review;
mod json_line;
pub mod mutate;
pub mod record;
pub mod review;

pub use image_review::{ImageReviewRequest, parse_image_review};
pub use mutate::MutateOutcome;
pub use review::{
    AdmissionRequest, Outcome, Target, parse_admission_review, parse_admission_review_carefully,
};

/// The longest warning returned to a client, in characters: the API server may truncate longer
/// ones, and `kubectl` prints each on its own line.
pub const MAX_WARNING_CHARS: usize = 256;

/// The most warnings returned for one object (a Pod with thousands of containers must not
/// produce a response the API server refuses); the last one says how many were left out.
pub const MAX_WARNINGS: usize = 32;

/// The most `status.details.causes` of one denial, for the same reason.
pub const MAX_CAUSES: usize = 64;

/// The longest denial message, in characters: enough for dozens of violations, small enough
/// for the API server's error response and a terminal.
pub const MAX_MESSAGE_CHARS: usize = 8 * 1024;

/// The longest audit annotation value, in characters; audit logs are stored and shipped, so a
/// Pod with thousands of containers must not write megabytes into them.
pub const MAX_AUDIT_ANNOTATION_CHARS: usize = 4 * 1024;

/// Why a body is not a review imagegate can answer: HTTP 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// Not JSON, or JSON of the wrong shape (including nesting beyond the parser's limit).
    #[error("the body is not a valid {expected}: {message}")]
    Malformed {
        expected: &'static str,
        message: String,
    },
    /// Another kind or apiVersion.
    #[error(
        "expected apiVersion {expected_api_version:?} and kind {expected_kind:?}, got apiVersion {api_version:?} and kind {kind:?}"
    )]
    WrongType {
        expected_api_version: &'static str,
        expected_kind: &'static str,
        api_version: String,
        kind: String,
    },
    /// A required field is missing or empty.
    #[error("the {expected} has no {field}")]
    Missing {
        expected: &'static str,
        field: &'static str,
    },
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    // A string of at most `max` bytes has at most `max` characters.
    if s.len() <= max {
        return s.to_owned();
    }
    match s.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if s[cut..].chars().nth(1).is_some() => format!("{}…", &s[..cut]),
        _ => s.to_owned(),
    }
}

/// The warnings for a client: each cut to [`MAX_WARNING_CHARS`], at most [`MAX_WARNINGS`].
pub fn client_warnings(warnings: &[String]) -> Vec<String> {
    let mut out: Vec<String> = warnings
        .iter()
        .take(MAX_WARNINGS)
        .map(|w| truncate(w, MAX_WARNING_CHARS))
        .collect();
    if warnings.len() > MAX_WARNINGS {
        out.pop();
        out.push(format!(
            "… and {} more image policy warnings (see the imagegate decision record)",
            warnings.len() - MAX_WARNINGS + 1
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 4), "ééé…");
        assert_eq!(truncate("", 3), "");
        assert_eq!(truncate("abcd", 3).chars().count(), 3);
    }

    #[test]
    fn caps_warnings() {
        let many: Vec<String> = (0..100)
            .map(|i| format!("w{i} {}", "x".repeat(300)))
            .collect();
        let out = client_warnings(&many);
        assert_eq!(out.len(), MAX_WARNINGS);
        assert!(out.iter().all(|w| w.chars().count() <= MAX_WARNING_CHARS));
        assert!(
            out.last().unwrap().contains("69 more"),
            "{}",
            out.last().unwrap()
        );
        assert_eq!(client_warnings(&["a".to_owned()]), ["a"]);
    }
}
