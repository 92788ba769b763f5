//! Logging: JSON lines by default (for log collectors), human-readable text on request. The
//! level comes from `RUST_LOG` (default `info`).
//!
//! A request never waits for stderr, and writing a line costs it no system call: lines are
//! appended to one in-memory batch, and a writer thread writes the batch out every
//! [`FLUSH_INTERVAL`], or as soon as it holds [`FLUSH_BYTES`]. Decision records (target
//! `imagegate::decision`) are serialised by [`crate::admission::record`] directly as one nested
//! JSON object per line and appended to the same batch, so all lines reach stderr whole and in
//! order. When stderr cannot keep up and [`MAX_PENDING_BYTES`] are waiting, new lines are
//! dropped rather than blocking requests or growing without bound, and the writer says how
//! many it dropped.
//!
//! Why not a per-line queue to a writer thread (`tracing-appender`'s non-blocking writer): under
//! load its writer drains the queue after every line and goes back to sleep, so each request
//! paid for waking it (a futex call and a context switch), which under load cost about as much
//! as serialising the record. Batching wakes the writer a few dozen times a second whatever the
//! request rate.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
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

/// A batch this large is written at once, without waiting for the interval. At full load
/// (~50,000 decision records a second on two cores, ~75 MB/s) this wakes the writer about 75
/// times a second.
pub const FLUSH_BYTES: usize = 1024 * 1024;

/// The most bytes waiting for stderr; lines beyond it are dropped and counted. At ~1.5 KB per
/// decision record, about ten thousand records: seconds of a stall at full load.
pub const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;

/// Where JSON decision records go once [`init`] has run with `--log-format json`.
static RECORDS: OnceLock<LogWriter> = OnceLock::new();

/// Lines waiting for the writer thread.
#[derive(Default)]
struct Pending {
    batch: Mutex<Vec<u8>>,
    /// Signalled when the batch reaches [`FLUSH_BYTES`] and on close.
    full: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

impl Pending {
    fn batch(&self) -> MutexGuard<'_, Vec<u8>> {
        // Appending bytes cannot leave the batch inconsistent, so a poisoned lock is still
        // usable (and nothing that holds it can panic).
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Appends whole lines to the batch. Cloning it is cheap; every clone feeds the same writer.
#[derive(Clone, Default)]
pub struct LogWriter {
    pending: Arc<Pending>,
}

impl LogWriter {
    /// Appends one or more whole lines (each ending in a newline).
    pub fn push(&self, lines: &[u8]) {
        let mut batch = self.pending.batch();
        if batch.len() + lines.len() > MAX_PENDING_BYTES {
            drop(batch);
            self.pending.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let before = batch.len();
        batch.extend_from_slice(lines);
        let reached = before < FLUSH_BYTES && batch.len() >= FLUSH_BYTES;
        drop(batch);
        if reached {
            self.pending.full.notify_one();
        }
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
        // Taking the lock orders the flag before the writer's next check of it.
        drop(self.pending.batch());
        self.pending.full.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for a full batch or the interval, swaps the batch out, writes it.
fn write_batches(pending: &Pending, mut out: impl Write, json: bool, interval: Duration) {
    let mut spare: Vec<u8> = Vec::with_capacity(FLUSH_BYTES);
    let mut reported = 0;
    loop {
        let closed = {
            let batch = pending.batch();
            let (mut batch, _) = pending
                .full
                .wait_timeout_while(batch, interval, |b| {
                    b.len() < FLUSH_BYTES && !pending.closed.load(Ordering::Acquire)
                })
                .unwrap_or_else(|e| e.into_inner());
            std::mem::swap(&mut *batch, &mut spare);
            pending.closed.load(Ordering::Acquire)
        };
        let dropped = pending.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            spare.extend_from_slice(dropped_line(dropped - reported, json).as_bytes());
            reported = dropped;
        }
        if !spare.is_empty() {
            // Nowhere to report a failure to write the log itself; the lines are lost.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            // A burst may have grown the buffer far beyond the usual batch.
            spare.shrink_to(2 * FLUSH_BYTES);
        }
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

/// Appends one serialised JSON record (ending in a newline) to the log.
pub fn write_record(line: &[u8]) {
    if let Some(writer) = RECORDS.get() {
        writer.push(line);
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
