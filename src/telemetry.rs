//! Logging set-up: human-readable on a terminal, JSON lines otherwise, filtered
//! with `RUST_LOG` (default `info`). Lines are written by a dedicated thread,
//! so a slow stdout never stalls a request; none are dropped (when its buffer
//! is full, logging waits rather than losing access-log lines). The thread
//! writes whatever lines have queued up in one system call.

use std::io::IsTerminal;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Installs the subscriber; keep the guard alive until exit so the last lines
/// are flushed.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let terminal = std::io::stdout().is_terminal();
    let (writer, guard) =
        NonBlockingBuilder::default()
            .lossy(false)
            .finish(std::io::BufWriter::with_capacity(
                64 * 1024,
                std::io::stdout(),
            ));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if terminal {
        builder.compact().init();
    } else {
        builder.event_format(crate::log_format::JsonLines).init();
    }
    guard
}
