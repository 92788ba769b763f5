//! Logging: JSON lines by default (for log collectors), human-readable text on request. The
//! level comes from `RUST_LOG` (default `info`). Decision records are the events with target
//! `imagegate::decision`.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The filter when `RUST_LOG` is unset: our own info lines, and only warnings from libraries.
const DEFAULT_FILTER: &str = "warn,imagegate=info";

/// Installs the global subscriber. Calling it twice (as tests do) keeps the first one.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(true).try_init(),
    };
}
