//! Memory and compile time of policy snapshots at scale (issue sizes: 100, 1,000 and 10,000
//! policies with 3 and with 100 patterns each; `benches/support/generated.rs` makes them).
//!
//! Not a criterion benchmark: what it measures is memory, which criterion does not. A counting
//! global allocator (over mimalloc, as in the `imagegate` binary) keeps the bytes in use and
//! their peak, so the snapshot's own heap is measured exactly, apart from the policies it was
//! compiled from:
//!
//! - **snapshot**: bytes in use after compiling, less before (the input policies stay alive
//!   throughout, so they cancel out), and per pattern;
//! - **peak**: the most bytes in use above the start while compiling (the snapshot and what
//!   compiling needs on the way);
//! - **compile**: the wall time of `Snapshot::compile`, the fastest of a few runs;
//! - **resident**: the process's resident memory (`VmRSS`) after compiling, less before, which
//!   also counts the allocator's rounding and the pages it keeps.
//!
//! ```sh
//! cargo bench --bench snapshot                  # every size
//! cargo bench --bench snapshot -- 1000x100      # some sizes (POLICIESxPATTERNS)
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imagegate::policy::{Settings, Snapshot};

#[path = "support/generated.rs"]
mod generated;

/// Counts the bytes in use and their peak, over mimalloc.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as received.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = IN_USE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The sizes of the issue: policies × patterns per policy.
const SIZES: [(usize, usize); 6] = [
    (100, 3),
    (1_000, 3),
    (10_000, 3),
    (100, 100),
    (1_000, 100),
    (10_000, 100),
];

/// Compile runs per size; the fastest is reported (the others are disturbed by the machine).
const RUNS: usize = 3;

/// `VmRSS` of this process, in bytes.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    println!(
        "| policies | patterns each | patterns | compile | snapshot | per pattern | peak while compiling | resident |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (n, per) in SIZES {
        if !wanted.is_empty() && !wanted.contains(&format!("{n}x{per}")) {
            continue;
        }
        let policies = generated::policies(n, per);
        let patterns = generated::pattern_count(n, per);

        let mut fastest = Duration::MAX;
        for _ in 0..RUNS {
            let start = Instant::now();
            let compiled = Snapshot::compile(&policies, Settings::default());
            fastest = fastest.min(start.elapsed());
            drop(black_box(compiled));
        }

        let rss_before = resident();
        let before = IN_USE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
        assert!(errors.is_empty(), "generated policies compile: {errors:?}");
        let after = IN_USE.load(Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed);
        let rss_after = resident();
        let size = after - before;
        println!(
            "| {n} | {per} | {patterns} | {:.1} ms | {} | {} B | {} | {} |",
            fastest.as_secs_f64() * 1000.0,
            mib(size),
            size / patterns,
            mib(peak - before),
            mib(rss_after.saturating_sub(rss_before)),
        );
        drop(black_box(snapshot));
    }
}
