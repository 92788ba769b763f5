//! Logging: JSON lines by default (for log collectors), human-readable text on request. The
//! level comes from `RUST_LOG` (default `info`).
//!
//! A request never waits for stderr, and writing a line costs it no system call and no lock
//! that another thread takes at the same time: each thread appends its lines to its own
//! in-memory batch, and a writer thread writes the batches out every [`FLUSH_INTERVAL`], or as
//! soon as one holds [`FLUSH_BYTES`]. Decision records (target `imagegate::decision`) are
//! serialised by [`crate::admission::record`] directly into the thread's batch, as one nested
//! JSON object per line, with no copy in between. Every line reaches stderr whole; the lines of
//! one thread keep their order, and lines of different threads are at most one interval apart
//! from the order of their timestamps. When stderr cannot keep up and a thread has
//! [`MAX_PENDING_BYTES`] waiting, its new lines are dropped rather than blocking requests or
//! growing without bound, and the writer says how many it dropped.
//!
//! Why not a per-line queue to a writer thread (`tracing-appender`'s non-blocking writer): under
//! load its writer drains the queue after every line and goes back to sleep, so each request
//! paid for waking it (a futex call and a context switch), which under load cost about as much
//! as serialising the record. Batching wakes the writer a few hundred times a second whatever
//! the request rate. Why a batch per thread rather than one shared batch: with one, every line
//! took a lock that the other workers were taking too, and the batch's memory moved between
//! their caches; a thread's own batch stays in its core's cache, and its lock is taken by
//! another thread only when the writer collects it.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::cli::LogFormat;

/// The filter when `RUST_LOG` is unset: our own info lines, and only warnings from libraries.
const DEFAULT_FILTER: &str = "warn,imagegate=info";

/// How long a line may wait before it is written: short enough that `kubectl logs -f` looks
/// live, long enough that the writer wakes rarely under load.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// A thread's batch this large is written at once, without waiting for the interval. Small
/// enough to stay in the core's own cache (a megabyte or two on current servers) with the
/// batch the writer is writing; at full load (~30,000 decision records a second per worker, ~45
/// MB/s) it wakes the writer a few hundred times a second per worker.
pub const FLUSH_BYTES: usize = 128 * 1024;

/// The most bytes waiting for stderr from one thread; its lines beyond it are dropped and
/// counted. At ~1.5 KB per decision record, about ten thousand records: seconds of a stall at
/// full load.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Where JSON decision records go once [`init`] has run with `--log-format json`.
static RECORDS: OnceLock<LogWriter> = OnceLock::new();

thread_local! {
    /// This thread's batch for each [`LogWriter`] it has written to (in practice one).
    static BATCHES: RefCell<Vec<(Weak<Pending>, Arc<Batch>)>> = const { RefCell::new(Vec::new()) };
}

/// Lines waiting for the writer thread.
#[derive(Default)]
struct Pending {
    /// The batch of every thread that has written a line and not yet exited with it written.
    batches: Mutex<Vec<Arc<Batch>>>,
    /// Set when a batch reaches [`FLUSH_BYTES`] and on close; the writer waits for it.
    wake: Mutex<bool>,
    woken: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// One thread's lines. Its lock is taken by its thread for each line, and by the writer only
/// when it collects them.
#[derive(Default)]
struct Batch {
    lines: Mutex<Vec<u8>>,
}

impl Batch {
    fn lines(&self) -> MutexGuard<'_, Vec<u8>> {
        // Appending bytes cannot leave the batch inconsistent, so a poisoned lock is still
        // usable (and nothing that holds it can panic).
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Pending {
    fn batches(&self) -> MutexGuard<'_, Vec<Arc<Batch>>> {
        self.batches.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_writer(&self) {
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.woken.notify_one();
    }
}

/// Appends whole lines to the calling thread's batch. Cloning it is cheap; every clone feeds
/// the same writer.
#[derive(Clone, Default)]
pub struct LogWriter {
    pending: Arc<Pending>,
}

impl LogWriter {
    /// Appends one or more whole lines (each ending in a newline).
    pub fn push(&self, lines: &[u8]) {
        self.append(lines.len(), |batch| batch.extend_from_slice(lines));
    }

    /// Lets `write` append whole lines to the calling thread's batch, in place. `expected` is
    /// how many bytes it will likely write: when they would take the batch past
    /// [`MAX_PENDING_BYTES`], `write` is not called and the lines are counted as dropped.
    /// `write` runs under the batch's lock, so it must not log.
    pub fn append(&self, expected: usize, write: impl FnOnce(&mut Vec<u8>)) {
        self.with_batch(|batch| {
            let mut lines = batch.lines();
            if lines.len() + expected > MAX_PENDING_BYTES {
                drop(lines);
                self.pending.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let before = lines.len();
            write(&mut lines);
            let reached = before < FLUSH_BYTES && lines.len() >= FLUSH_BYTES;
            drop(lines);
            if reached {
                self.pending.wake_writer();
            }
        });
    }

    /// Calls `f` with the calling thread's batch, registering one on the thread's first line.
    fn with_batch(&self, f: impl FnOnce(&Batch)) {
        let ours = |(writer, _): &(Weak<Pending>, Arc<Batch>)| {
            std::ptr::eq(writer.as_ptr(), Arc::as_ptr(&self.pending))
        };
        BATCHES.with(|mine| {
            if !mine.borrow().iter().any(ours) {
                let mut mine = mine.borrow_mut();
                // Writers that are gone are forgotten here, at the thread's next new one.
                mine.retain(|(writer, _)| writer.strong_count() > 0);
                let batch = Arc::new(Batch::default());
                self.pending.batches().push(Arc::clone(&batch));
                mine.push((Arc::downgrade(&self.pending), batch));
            }
            // A shared borrow while `f` runs: the thread-local is never borrowed mutably then.
            let mine = mine.borrow();
            if let Some((_, batch)) = mine.iter().find(|entry| ours(entry)) {
                f(batch);
            }
        });
    }

    /// Lines dropped so far because too many were waiting.
    pub fn dropped(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    /// Starts the thread that writes batches to `out`, at least every `interval`, until the
    /// returned guard is dropped; `json` is the format of the line that reports dropped lines.
    pub fn start(
        &self,
        out: impl Write + Send + 'static,
        json: bool,
        interval: Duration,
    ) -> io::Result<LogGuard> {
        let pending = Arc::clone(&self.pending);
        let thread = std::thread::Builder::new()
            .name("imagegate-log".to_owned())
            .spawn(move || write_batches(&pending, out, json, interval))?;
        Ok(LogGuard {
            pending: Arc::clone(&self.pending),
            thread: Some(thread),
        })
    }
}

impl Write for &LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter writes each event with one call, so a call is a whole line.
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = &'a LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Keeps the writer thread running; dropping it writes what is waiting and stops the thread.
pub struct LogGuard {
    pending: Arc<Pending>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.pending.closed.store(true, Ordering::Release);
        self.pending.wake_writer();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for a full batch or the interval, then takes every thread's lines
/// (swapping in an empty buffer under the thread's lock) and writes them.
fn write_batches(pending: &Pending, mut out: impl Write, json: bool, interval: Duration) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_BYTES);
    let mut reported = 0;
    loop {
        {
            let wake = pending.wake.lock().unwrap_or_else(|e| e.into_inner());
            let (mut wake, _) = pending
                .woken
                .wait_timeout_while(wake, interval, |woken| !*woken)
                .unwrap_or_else(|e| e.into_inner());
            *wake = false;
        }
        // Read before collecting: what a closing guard's thread wrote before closing is
        // collected in this round, the last.
        let closed = pending.closed.load(Ordering::Acquire);
        let batches = pending.batches().clone();
        for batch in &batches {
            {
                let mut lines = batch.lines();
                if lines.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *lines, &mut spare);
            }
            // Nowhere to report a failure to write the log itself; the lines are lost.
            let _ = out.write_all(&spare);
            spare.clear();
            // A burst may have grown the buffer far beyond the usual batch.
            spare.shrink_to(2 * FLUSH_BYTES);
        }
        drop(batches);
        // The batches of threads that have exited, now written, are no longer needed.
        pending
            .batches()
            .retain(|batch| Arc::strong_count(batch) > 1 || !batch.lines().is_empty());
        let dropped = pending.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = out.write_all(dropped_line(dropped - reported, json).as_bytes());
            reported = dropped;
        }
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

/// The line that says lines were dropped, in the log's format.
fn dropped_line(count: u64, json: bool) -> String {
    let message = format!(
        "{count} log lines were dropped because stderr did not keep up (more than {MAX_PENDING_BYTES} bytes were waiting)"
    );
    let now = jiff::Timestamp::now();
    if json {
        let line = serde_json::json!({
            "timestamp": now,
            "level": "WARN",
            "target": "imagegate::telemetry",
            "message": message,
            "dropped": count,
        });
        format!("{line}\n")
    } else {
        format!("{now}  WARN imagegate::telemetry: {message}\n")
    }
}

/// Keeps the log writer thread alive; dropping it writes what is waiting.
#[must_use = "dropping the guard stops the log writer"]
pub struct Telemetry {
    _guard: Option<LogGuard>,
}

/// Installs the global subscriber. Calling it twice (as tests do) keeps the first one.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let writer = LogWriter::default();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone());
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder
            .with_target(true)
            .with_ansi(io::stderr().is_terminal())
            .try_init(),
    };
    if installed.is_err() {
        return Telemetry { _guard: None };
    }
    let json = format == LogFormat::Json;
    let guard = match writer.start(io::stderr(), json, FLUSH_INTERVAL) {
        Ok(guard) => guard,
        Err(e) => {
            // Without the thread nothing would reach stderr; say so where it still can.
            eprintln!("imagegate: cannot start the log writer thread: {e}");
            return Telemetry { _guard: None };
        }
    };
    if json {
        let _ = RECORDS.set(writer);
    }
    Telemetry {
        _guard: Some(guard),
    }
}

/// Whether decision records are written as JSON lines by [`write_record`]; otherwise they go
/// through `tracing` as text events.
pub fn json_records() -> bool {
    RECORDS.get().is_some()
}

/// Lets `write` serialise one JSON record (ending in a newline) directly into the calling
/// thread's batch; `expected` is its usual size (see [`LogWriter::append`]).
pub fn write_record(expected: usize, write: impl FnOnce(&mut Vec<u8>)) {
    if let Some(writer) = RECORDS.get() {
        writer.append(expected, write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the writer thread owns a handle to it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn lines_are_written_whole_in_order_within_the_interval() {
        let writer = LogWriter::default();
        let out = Shared::default();
        let guard = writer.start(out.clone(), true, FLUSH_INTERVAL).unwrap();
        writer.push(b"one\n");
        (&writer).write_all(b"two\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.text() != "one\ntwo\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "not written: {:?}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.push(b"three\n");
        drop(guard);
        assert_eq!(out.text(), "one\ntwo\nthree\n", "closing writes what waits");
    }

    #[test]
    fn a_full_batch_is_written_without_waiting_for_the_interval() {
        let writer = LogWriter::default();
        let out = Shared::default();
        // An interval far longer than the test: only a full batch can wake the writer.
        let _guard = writer
            .start(out.clone(), true, Duration::from_secs(3600))
            .unwrap();
        writer.push(b"waits\n");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(out.text(), "", "a small batch waits for the interval");
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..FLUSH_BYTES / line.len() {
            writer.push(line.as_bytes());
        }
        let started = std::time::Instant::now();
        while out.text().len() < FLUSH_BYTES {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a full batch was not written"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let text = out.text();
        assert!(text.starts_with("waits\n"));
        assert!(
            text.lines().skip(1).all(|l| l.len() == 1023),
            "lines are whole"
        );
    }

    #[test]
    fn every_thread_s_lines_are_written_whole_and_in_its_order_even_after_it_exits() {
        let writer = LogWriter::default();
        let out = Shared::default();
        let guard = writer.start(out.clone(), true, FLUSH_INTERVAL).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        writer.append(16, |batch| {
                            batch.extend_from_slice(
                                format!("{t} {i:04} {}\n", "z".repeat(i % 300)).as_bytes(),
                            )
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // The threads have exited; their last lines are still written.
        drop(guard);
        let text = out.text();
        for t in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{t} ")))
                .map(|rest| {
                    let (number, zs) = rest.split_once(' ').unwrap();
                    let number: usize = number.parse().unwrap();
                    assert_eq!(zs, "z".repeat(number % 300), "the line is whole");
                    number
                })
                .collect();
            assert_eq!(numbers, (0..1000).collect::<Vec<_>>(), "thread {t}");
        }
        assert_eq!(text.lines().count(), 4000);
        assert_eq!(
            writer.pending.batches().len(),
            0,
            "the batches of exited threads are let go once written"
        );
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_reported() {
        let writer = LogWriter::default();
        // No writer thread yet: everything waits.
        let mut line = vec![b'y'; 1024 * 1024 - 1];
        line.push(b'\n');
        for _ in 0..20 {
            writer.push(&line);
        }
        assert_eq!(writer.dropped(), 4, "16 MiB fit, 4 of 20 MiB do not");
        let out = Shared::default();
        drop(writer.start(out.clone(), true, FLUSH_INTERVAL).unwrap());
        let text = out.text();
        assert_eq!(
            text.len() - text.lines().last().unwrap().len() - 1,
            MAX_PENDING_BYTES
        );
        let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(report["level"], "WARN");
        assert_eq!(report["dropped"], 4);
        assert!(dropped_line(2, false).contains("2 log lines were dropped"));
    }
}
