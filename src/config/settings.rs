//! Numeric settings with defaults and range checks: durations in seconds,
//! socket buffer sizes, the retry policy and the circuit breaker.

use super::ConfigProblem;
use super::file::{BreakerFile, RetryFile};
use crate::proxy::breaker::BreakerSettings;
use crate::proxy::failover::RetrySettings;
use std::time::Duration;

/// The shortest duration a setting takes: a millisecond. Shorter ones
/// (`1e-300`, which passes as positive) would have the gateway close
/// every connection before its head arrives, or send keep-alive comments
/// without pause.
const SHORTEST_SECS: f64 = 0.001;

/// Whether `secs` is a duration a setting takes.
fn in_range(secs: f64) -> bool {
    secs.is_finite() && (SHORTEST_SECS..1e9).contains(&secs)
}

/// A number of seconds from a millisecond on, or `default` when absent.
pub fn seconds(
    value: Option<f64>,
    path: &str,
    default: Duration,
    problems: &mut Vec<ConfigProblem>,
) -> Duration {
    match value {
        None => default,
        Some(secs) if in_range(secs) => Duration::from_secs_f64(secs),
        Some(_) => {
            problems.push(ConfigProblem::new(
                path,
                "must be a number of seconds from 0.001 (a millisecond) to less than 1,000,000,000",
            ));
            default
        }
    }
}

/// `seconds` for a setting that 0 turns off (`None`): its message names
/// the 0 too, and what it does (`zero_is`).
pub fn seconds_or_off(
    value: Option<f64>,
    path: &str,
    default: Duration,
    zero_is: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Duration> {
    match value {
        Some(0.0) => None,
        Some(secs) if !in_range(secs) => {
            problems.push(ConfigProblem::new(
                path,
                format!(
                    "must be 0 ({zero_is}) or a number of seconds from 0.001 (a millisecond) to less than 1,000,000,000"
                ),
            ));
            Some(default)
        }
        other => Some(seconds(other, path, default, problems)),
    }
}

fn at_least_one(
    value: Option<u32>,
    path: &str,
    default: u32,
    problems: &mut Vec<ConfigProblem>,
) -> u32 {
    match value {
        Some(0) => {
            problems.push(ConfigProblem::new(path, "must be at least 1"));
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// The least socket buffer size a setting takes, other than 0: with less,
/// Linux's delayed acknowledgements (40 ms) pace every round trip, and a
/// 16 MB answer over loopback took seconds instead of milliseconds.
pub const LEAST_SOCKET_BUFFER: u64 = 64 * 1024;

/// The largest socket buffer size a setting takes: the socket option is a
/// C int.
const LARGEST_SOCKET_BUFFER: u64 = i32::MAX as u64;

/// A kernel socket buffer size asked for (`SO_SNDBUF`, `SO_RCVBUF`):
/// `default` when absent, `None` (the kernel's own) for 0, from
/// [`LEAST_SOCKET_BUFFER`] to [`LARGEST_SOCKET_BUFFER`] otherwise.
pub fn socket_buffer(
    value: Option<u64>,
    path: &str,
    default: usize,
    problems: &mut Vec<ConfigProblem>,
) -> Option<usize> {
    match value {
        None => Some(default),
        Some(0) => None,
        Some(n) if n < LEAST_SOCKET_BUFFER => {
            problems.push(ConfigProblem::new(
                path,
                format!(
                    "{n} is less than {LEAST_SOCKET_BUFFER}, the least it may be \
                     (0: the kernel's own)"
                ),
            ));
            Some(default)
        }
        Some(n) if n > LARGEST_SOCKET_BUFFER => {
            problems.push(ConfigProblem::new(
                path,
                format!("{n} is more than {LARGEST_SOCKET_BUFFER}, the most it may be"),
            ));
            Some(default)
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    }
}

pub fn retry_settings(file: &RetryFile, problems: &mut Vec<ConfigProblem>) -> RetrySettings {
    let d = RetrySettings::default();
    let base = file
        .backoff_base_ms
        .map_or(d.backoff_base, Duration::from_millis);
    let max = file
        .backoff_max_ms
        .map_or(d.backoff_max, Duration::from_millis);
    not_below(
        (max, "retry.backoff_max_ms"),
        (base, "retry.backoff_base_ms"),
        problems,
    );
    RetrySettings {
        max_attempts: at_least_one(
            file.max_attempts,
            "retry.max_attempts",
            d.max_attempts,
            problems,
        ),
        deadline: seconds(
            file.deadline_secs,
            "retry.deadline_secs",
            d.deadline,
            problems,
        ),
        backoff_base: base,
        backoff_max: max,
        max_retry_after: seconds_or_off(
            file.max_retry_after_secs,
            "retry.max_retry_after_secs",
            d.max_retry_after,
            "never wait",
            problems,
        )
        .unwrap_or(Duration::ZERO),
    }
}

pub fn breaker_settings(file: &BreakerFile, problems: &mut Vec<ConfigProblem>) -> BreakerSettings {
    let d = BreakerSettings::default();
    let error_ratio = match file.error_ratio {
        None => d.error_ratio,
        Some(r) if r > 0.0 && r <= 1.0 => r,
        Some(_) => {
            problems.push(ConfigProblem::new(
                "breaker.error_ratio",
                "must be in (0, 1]",
            ));
            d.error_ratio
        }
    };
    let cooldown = seconds(
        file.cooldown_secs,
        "breaker.cooldown_secs",
        d.cooldown,
        problems,
    );
    let max_cooldown = seconds(
        file.max_cooldown_secs,
        "breaker.max_cooldown_secs",
        d.max_cooldown,
        problems,
    );
    not_below(
        (max_cooldown, "breaker.max_cooldown_secs"),
        (cooldown, "breaker.cooldown_secs"),
        problems,
    );
    BreakerSettings {
        consecutive_failures: at_least_one(
            file.consecutive_failures,
            "breaker.consecutive_failures",
            d.consecutive_failures,
            problems,
        ),
        error_ratio,
        window: seconds(file.window_secs, "breaker.window_secs", d.window, problems),
        min_requests: at_least_one(
            file.min_requests,
            "breaker.min_requests",
            d.min_requests,
            problems,
        ),
        cooldown,
        max_cooldown,
    }
}

/// A bound that must not be below the value it bounds (a maximum backoff
/// or cool-down under its base), each given with its setting's name.
fn not_below(
    (max, max_name): (Duration, &str),
    (base, base_name): (Duration, &str),
    problems: &mut Vec<ConfigProblem>,
) {
    if max < base {
        problems.push(ConfigProblem::new(
            max_name,
            format!("must not be smaller than {base_name}"),
        ));
    }
}
