//! The fast AdmissionReview reader against the careful one: on any body that is JSON, both
//! answer alike (the fast one skims, and hands what it does not read cleanly to the careful
//! one). Neither may panic on any input.
#![no_main]

use imagegate::admission::{parse_admission_review, parse_admission_review_carefully};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let fast = parse_admission_review(body);
    let careful = parse_admission_review_carefully(body);
    // The fast reader does not validate what it skips: only bodies that are JSON must agree.
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        assert_eq!(
            format!("{fast:?}"),
            format!("{careful:?}"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
});
