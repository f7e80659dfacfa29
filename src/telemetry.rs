//! Logging set-up: human-readable on a terminal, JSON lines otherwise, filtered
//! with `RUST_LOG` (default `info`). Lines are written to stdout by the
//! [`crate::log_writer`] thread, so a slow stdout never stalls a request;
//! a stuck one loses lines past 8 MiB waiting, counted.

use crate::log_writer::{LogWriter, LogWriterGuard};
use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::EnvFilter;

/// The log's writer when lines are JSON, for lines written without an event
/// (see [`crate::log_format::JsonLine`]).
static JSON_SINK: OnceLock<LogWriter> = OnceLock::new();

/// Where to append a ready JSON line, if the logs are JSON lines written by
/// [`init`] (not on a terminal, not in tests with a subscriber of their own).
pub fn json_sink() -> Option<&'static LogWriter> {
    JSON_SINK.get()
}

/// Installs the subscriber; keep the guard alive until exit so the last lines
/// are flushed.
pub fn init() -> LogWriterGuard {
    // A filter that does not parse falls back to `info`, said once the
    // subscriber is up: a typo must not silence the log, nor pass unseen.
    let (filter, unreadable) = match EnvFilter::try_from_default_env() {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    // The config file watcher's library logs every change it sees in the
    // directory at debug and trace: a log written into that directory would
    // then log its own writes without end. Its lines only when asked for.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    let filter = if asked.contains("notify") {
        filter
    } else {
        filter.add_directive("notify=info".parse().expect("a valid directive"))
    };
    let terminal = std::io::stdout().is_terminal();
    let (writer, guard) = LogWriter::spawn(std::io::stdout());
    if !terminal {
        let _ = JSON_SINK.set(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if terminal {
        builder.compact().init();
    } else {
        builder.event_format(crate::log_format::JsonLines).init();
    }
    if let Some(error) = unreadable.filter(|_| std::env::var_os("RUST_LOG").is_some()) {
        tracing::warn!(%error, "RUST_LOG is not a filter the gateway can read; logging at info");
    }
    guard
}
