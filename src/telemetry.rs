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
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    // A filter that does not read falls back to `info`, said once the
    // subscriber is up: a typo must not silence the log, nor pass unseen.
    let (filter, unreadable) = match filter_from(&asked) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    // The config file watcher's library logs every change it sees in the
    // directory at debug and trace: a log written into that directory would
    // then log its own writes without end. Its lines only when asked for.
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
    if let Some(error) = unreadable {
        tracing::warn!(%error, "RUST_LOG is not a filter the gateway can read; logging at info");
    }
    guard
}

/// The filter `RUST_LOG` asks for: `info` when it is unset or blank (a
/// variable passed through empty). A bare word must be a level: one that
/// is not (`infoo`, `warning`) would read as a target's name and turn off
/// every other line, errors included, so it is refused; a target at every
/// level is written `target=trace`.
fn filter_from(asked: &str) -> Result<EnvFilter, String> {
    if asked.trim().is_empty() {
        return Ok(EnvFilter::new("info"));
    }
    let not_a_level = asked.split(',').map(str::trim).find(|directive| {
        !directive.is_empty()
            && !directive.contains(['=', '[', ':'])
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
    });
    if let Some(word) = not_a_level {
        return Err(format!(
            "`{word}` is not a level (trace, debug, info, warn, error, off); \
             to log a target at every level write `{word}=trace`"
        ));
    }
    EnvFilter::try_new(asked).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_word_must_be_a_level() {
        for read in [
            "info",
            "WARN",
            "Debug",
            "off",
            "kimi_gateway=debug,info",
            "kimi_gateway::server",
        ] {
            assert!(filter_from(read).is_ok(), "{read}");
        }
        assert_eq!(filter_from("").unwrap().to_string(), "info");
        assert_eq!(filter_from("  ").unwrap().to_string(), "info");
        for unread in [
            "infoo",
            "warning",
            "eror",
            "info,warning",
            "kimi_gateway=loud",
        ] {
            assert!(filter_from(unread).is_err(), "{unread}");
        }
        let error = filter_from("warning").unwrap_err();
        assert!(error.contains("`warning` is not a level"), "{error}");
        assert!(error.contains("`warning=trace`"), "{error}");
    }
}
