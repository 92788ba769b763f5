//! Memory and compile time of policy snapshots at scale (issue sizes: 100, 1,000 and 10,000
//! policies with 3 and with 100 patterns each, and the same policies verifying signatures with two
//! entries each; `benches/support/generated.rs` makes them).
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
//!   also counts the allocator's rounding and the pages it keeps (each size runs in a process
//!   of its own);
//! - **rebuild beside it**: a second snapshot built while the first is kept, from the same
//!   policies with one changed, as a reload or a watch event builds it: the peak of the bytes
//!   in use above the first snapshot (and that peak over the first snapshot's size, plus one),
//!   and what the new snapshot holds that the first does not share.
//!
//! ```sh
//! cargo bench --bench snapshot                  # every size
//! cargo bench --bench snapshot -- 1000x100      # some sizes (POLICIESxPATTERNS)
//! cargo bench --bench snapshot -- 10000x3s      # signed (two signature entries per policy)
//! cargo bench --bench snapshot -- parts         # where the memory goes
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imagegate::policy::{Settings, Snapshot, SnapshotBuilder};

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

/// The sizes measured with signature entries ([`generated::signed`]).
const SIGNED_SIZES: [(usize, usize); 2] = [(1_000, 3), (10_000, 3)];

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

/// The bytes in use that `make`'s result holds.
fn heap<T>(make: impl FnOnce() -> T) -> (T, usize) {
    let before = IN_USE.load(Ordering::Relaxed);
    let made = make();
    (made, IN_USE.load(Ordering::Relaxed).saturating_sub(before))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(size) = args
        .iter()
        .position(|a| a == "--one")
        .and_then(|i| args.get(i + 1))
    {
        let (size, signed) = match size.strip_suffix('s') {
            Some(size) => (size, true),
            None => (size.as_str(), false),
        };
        let (n, per) = size
            .split_once('x')
            .and_then(|(n, p)| Some((n.parse().ok()?, p.parse().ok()?)))
            .expect("--one POLICIESxPATTERNS[s]");
        one_size(n, per, signed);
        return;
    }
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    println!(
        "| policies | patterns each | patterns | compile | snapshot | per pattern | peak while compiling | resident | rebuild beside it: peak | new snapshot's own |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let me = std::env::current_exe().expect("the benchmark's own path");
    let sizes = SIZES.iter().map(|&(n, per)| format!("{n}x{per}"));
    let signed = SIGNED_SIZES.iter().map(|&(n, per)| format!("{n}x{per}s"));
    for size in sizes.chain(signed) {
        if !wanted.is_empty() && !wanted.contains(&&size) {
            continue;
        }
        // Each size in a process of its own, so that what the allocator kept from the last one
        // does not hide the resident memory of this one.
        let status = std::process::Command::new(&me)
            .args(["--one", &size])
            .status()
            .expect("the benchmark runs itself");
        assert!(status.success(), "{size} failed");
    }
    if wanted.is_empty() || wanted.iter().any(|w| *w == "parts") {
        parts();
    }
}

/// One row of the table.
fn one_size(n: usize, per: usize, signed: bool) {
    let make = |i| {
        if signed {
            generated::signed(i, per)
        } else {
            generated::policy(i, per)
        }
    };
    let policies: Vec<_> = (0..n).map(make).collect();
    let mut patterns = generated::pattern_count(n, per);
    if signed {
        patterns += n * generated::SIGNED_PATTERNS;
    }

    let rss_before = resident();
    let before = IN_USE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let (snapshot, errors) = Snapshot::compile(&policies, Settings::default());
    assert!(errors.is_empty(), "generated policies compile: {errors:?}");
    let after = IN_USE.load(Ordering::Relaxed);
    let peak = PEAK.load(Ordering::Relaxed);
    let rss_after = resident();

    // A rebuild beside the snapshot in force, one policy changed, as a reload or a watch event
    // makes it: how far the bytes in use rise above the snapshot in force.
    let mut changed = policies.clone();
    changed[0] = make(n);
    changed[0].metadata.name = policies[0].metadata.name.clone();
    let steady = IN_USE.load(Ordering::Relaxed);
    PEAK.store(steady, Ordering::Relaxed);
    let secrets = imagegate::policy::SecretKeys::default();
    let mut builder = SnapshotBuilder::new(Some(&snapshot), &secrets);
    for p in &changed {
        builder.add(p).expect("compiles");
    }
    let rebuilt = builder.build(Settings::default());
    let rebuild_peak = PEAK.load(Ordering::Relaxed) - steady;
    let rebuilt_size = IN_USE.load(Ordering::Relaxed) - steady;
    drop(black_box(rebuilt));
    drop(changed);

    let mut fastest = Duration::MAX;
    for _ in 0..RUNS {
        let start = Instant::now();
        let compiled = Snapshot::compile(&policies, Settings::default());
        fastest = fastest.min(start.elapsed());
        drop(black_box(compiled));
    }
    let size = after - before;
    println!(
        "| {n} | {per}{} | {patterns} | {:.1} ms | {} | {} B | {} | {} | {} ({:.2}×) | {} |",
        if signed { " + 2 signature entries" } else { "" },
        fastest.as_secs_f64() * 1000.0,
        mib(size),
        size / patterns,
        mib(peak - before),
        mib(rss_after.saturating_sub(rss_before)),
        mib(rebuild_peak),
        (size + rebuild_peak) as f64 / size as f64,
        mib(rebuilt_size),
    );
    drop(black_box(snapshot));
}

/// Where the memory goes: the parts of a snapshot, and the parts of how it was built before
/// (globset and a regex per policy), each measured on its own.
fn parts() {
    use imagegate::policy::compile;

    println!();
    println!("| part | bytes |");
    println!("| --- | --- |");
    let row = |what: &str, bytes: usize| println!("| {what} | {bytes} |");

    let glob = |text: &str| {
        globset::GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .expect("glob")
    };
    let (g, bytes) = heap(|| glob("registry.corp.example/team-7/service-12"));
    row("globset: one `Glob` (its tokens)", bytes);
    let (m, bytes) = heap(|| g.compile_matcher());
    row("globset: the same glob's `GlobMatcher` (a regex)", bytes);
    drop(black_box(m));
    let (m, bytes) = heap(|| glob("v1.*").compile_matcher());
    row("globset: a tag suffix's `GlobMatcher` (`v1.*`)", bytes);
    drop(black_box(m));
    let (set, bytes) = heap(|| {
        let mut b = globset::GlobSetBuilder::new();
        b.add(glob("latest"));
        b.add(glob("*-dev"));
        b.build().expect("set")
    });
    row(
        "globset: a policy's `deniedTags` set (`latest`, `*-dev`)",
        bytes,
    );
    drop(black_box(set));
    let globs: Vec<globset::Glob> = (0..1000)
        .map(|i| glob(&format!("registry.corp.example/team-{i}/service-*")))
        .collect();
    let (set, bytes) = heap(|| {
        let mut b = globset::GlobSetBuilder::new();
        globs.iter().for_each(|g| {
            b.add(g.clone());
        });
        b.build().expect("set")
    });
    row(
        "globset: one `GlobSet` of 1,000 globs, per glob",
        bytes / 1000,
    );
    drop(black_box((set, globs, g)));

    let (r, bytes) = heap(|| {
        regex::RegexBuilder::new("^(?:INC-[0-9]+)$")
            .size_limit(64 * 1024)
            .build()
            .expect("regex")
    });
    row("regex: a break-glass `ticketPattern` (`INC-[0-9]+`)", bytes);
    drop(black_box(r));

    let (p, bytes) = heap(|| {
        imagegate::policy::pattern::Pattern::parse("registry.corp.example/team-7/service-12")
            .expect("pattern")
    });
    row(
        "a `Pattern`'s text (the 40-byte `Pattern` itself is in its list)",
        bytes,
    );
    drop(black_box(p));
    for per in [3, 100] {
        let policy = generated::policy(7, per);
        let (c, bytes) = heap(|| compile(&policy).expect("compiles"));
        row(
            &format!("a compiled policy of {per} patterns, ticket regex included"),
            bytes,
        );
        drop(black_box(c));
    }
    for per in [3, 100] {
        let (objects, bytes) = heap(|| generated::policies(1000, per));
        let json: usize = objects
            .iter()
            .map(|p| serde_json::to_string(p).expect("json").len())
            .sum();
        let patterns = generated::pattern_count(1000, per);
        row(
            &format!(
                "1,000 × {per} patterns: the `ImagePolicy` objects (as `run`'s store holds them, \
                 without `managedFields`), per pattern"
            ),
            bytes / patterns,
        );
        row(
            &format!(
                "1,000 × {per} patterns: the objects as JSON (what a `last-applied-configuration` \
                 annotation adds), per pattern"
            ),
            json / patterns,
        );
        drop(black_box(objects));
    }
    // Compiled as a snapshot compiles them: ticket regexes and keys shared.
    let compile_all = |policies: &[imagegate::policy::ImagePolicy]| {
        let secrets = imagegate::policy::SecretKeys::default();
        let mut cache = imagegate::policy::CompileCache::default();
        policies
            .iter()
            .map(|p| imagegate::policy::compile_shared(p, &secrets, &mut cache).expect("compiles"))
            .collect::<Vec<_>>()
    };
    let policies = generated::policies(1000, 100);
    let (compiled, policy_bytes) = heap(|| compile_all(&policies));
    let (snapshot, all) = heap(|| Snapshot::new(compiled, Settings::default()));
    let (globs, uses) = snapshot.matcher_size();
    row(
        "1,000 × 100 patterns: the compiled policies, per pattern",
        policy_bytes / 100_000,
    );
    row(
        &format!(
            "1,000 × 100 patterns: the snapshot around them (the matcher of {globs} distinct \
             patterns and {uses} uses, selectors, flags), per pattern"
        ),
        all / 100_000,
    );
    drop(black_box(snapshot));
    let plain = generated::policies(1000, 3);
    let signed = generated::signed_policies(1000, 3);
    let (a, plain_bytes) = heap(|| compile_all(&plain));
    let (b, signed_bytes) = heap(|| compile_all(&signed));
    row(
        "1,000 policies × 2 signature entries (one key each, the same in every policy): the \
         compiled entries, per entry",
        signed_bytes.saturating_sub(plain_bytes) / 2000,
    );
    let (a, plain_snapshot) = heap(|| Snapshot::new(a, Settings::default()));
    let (b, signed_snapshot) = heap(|| Snapshot::new(b, Settings::default()));
    row(
        "1,000 policies × 2 signature entries: what the entries' patterns add to the \
         snapshot around them, per entry pattern",
        signed_snapshot.saturating_sub(plain_snapshot) / (1000 * generated::SIGNED_PATTERNS),
    );
    drop(black_box((a, b)));
}
