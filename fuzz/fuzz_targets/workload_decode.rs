//! Decoding a Pod from arbitrary UTF-8 (what an AdmissionReview's `object` may hold): an error is
//! fine, a panic is not.

#![no_main]

use imagegate::workload::{Workload, WorkloadKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        let _ = Workload::from_json(WorkloadKind::Pod, json);
    }
});
