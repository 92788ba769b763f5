//! Logging: JSON lines by default (for log collectors), human-readable text on request. The
//! level comes from `RUST_LOG` (default `info`).
//!
//! Log lines go through a non-blocking writer: a request never waits for stderr. Decision
//! records (target `imagegate::decision`) are serialised by [`crate::admission::record`]
//! directly as one nested JSON object per line and handed to the same writer, so they cost one
//! serialisation and no blocking write on the admission path.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The filter when `RUST_LOG` is unset: our own info lines, and only warnings from libraries.
const DEFAULT_FILTER: &str = "warn,imagegate=info";

/// Lines buffered for the writer thread before new ones are dropped (and counted) rather than
/// blocking a request: at a few hundred bytes a line, about 16 MiB.
const BUFFERED_LINES: usize = 64 * 1024;

/// The log writer's buffer.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Where JSON decision records go once [`init`] has run with `--log-format json`.
static RECORDS: OnceLock<NonBlocking> = OnceLock::new();

/// Keeps the log writer thread alive; dropping it flushes what is buffered.
#[must_use = "dropping the guard stops the log writer"]
pub struct Telemetry {
    _guard: Option<WorkerGuard>,
}

/// Installs the global subscriber. Calling it twice (as tests do) keeps the first one.
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(BUFFERED_LINES)
        .lossy(true)
        // Buffered: the writer thread flushes whenever it has drained its queue, so a burst of
        // lines costs a few large writes instead of one system call each.
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER_BYTES,
            std::io::stderr(),
        ));
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
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    if installed.is_err() {
        return Telemetry { _guard: None };
    }
    if format == LogFormat::Json {
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

/// Hands one serialised JSON record (ending in a newline) to the log writer.
pub fn write_record(line: &[u8]) {
    if let Some(writer) = RECORDS.get() {
        let _ = writer.clone().write_all(line);
    }
}
