//! `[limits]` and every scope's limit table, validated: positive numbers,
//! known providers, a Redis URL when the backend is Redis.

use super::ConfigProblem;
use super::env_name::check_env_name;
use super::file::{LimitSpecFile, LimitsFile};
use super::providers::AbsentProviders;
use super::settings::seconds;
use crate::limits::{
    DEFAULT_MAX_TOKENS, DEFAULT_PROVIDER_QUEUE, LimitSettings, LimitSpec, OnRedisError,
    RedisSettings,
};
use std::num::{NonZeroU32, NonZeroU64};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_REDIS_PREFIX: &str = "kimi-gateway";
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// Largest `limits.redis_timeout_ms`.
const MAX_REDIS_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Shortest and longest `limits.redis_lease_secs`: a lease is refreshed
/// every third of it, and a dead replica's slots come back after it.
const MIN_LEASE: Duration = Duration::from_millis(100);
const MAX_LEASE: Duration = Duration::from_secs(86_400);

/// One scope's table: every value at least 1 (omit a limit for none).
pub fn limit_spec(
    file: &LimitSpecFile,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
) -> LimitSpec {
    let mut positive = |value: Option<u64>, field: &str| match value {
        Some(0) => {
            problems.push(ConfigProblem::new(
                format!("{path}.{field}"),
                "must be at least 1 (leave it out for no limit)",
            ));
            None
        }
        other => other,
    };
    // Request counts are held in 32 bits: a larger value (often written to
    // mean "unlimited") is held at the largest, which is in effect none.
    let small = |v: Option<u64>| v.map(|n| NonZeroU32::new(n.min(u64::from(u32::MAX)) as u32));
    // Token buckets count in nanoseconds: past one token a nanosecond, a
    // request's tokens would be rounded to whole nanoseconds of refill
    // (tens of tokens off at 10^12 a minute). Larger limits are held there:
    // in effect no limit too.
    let tokens = |v: Option<u64>, most: u64| v.and_then(|n| NonZeroU64::new(n.min(most)));
    let rpm = positive(file.requests_per_minute, "requests_per_minute");
    let rpd = positive(file.requests_per_day, "requests_per_day");
    let tpm = positive(file.tokens_per_minute, "tokens_per_minute");
    let tpd = positive(file.tokens_per_day, "tokens_per_day");
    let concurrent = positive(file.concurrent_requests, "concurrent_requests");
    LimitSpec {
        requests_per_minute: small(rpm).flatten(),
        requests_per_day: small(rpd).flatten(),
        tokens_per_minute: tokens(tpm, MAX_TOKENS_PER_MINUTE),
        tokens_per_day: tokens(tpd, MAX_TOKENS_PER_DAY),
        concurrent_requests: small(concurrent).flatten(),
    }
}

/// The largest token limits kept, one token a nanosecond; a larger one is
/// held at this.
pub const MAX_TOKENS_PER_MINUTE: u64 = 60_000_000_000;
pub const MAX_TOKENS_PER_DAY: u64 = 86_400_000_000_000;

/// `[limits]`; `providers` are the configured provider names.
pub fn limit_settings(
    file: &LimitsFile,
    providers: &[&str],
    absent: &AbsentProviders,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<ConfigProblem>,
) -> LimitSettings {
    let global = file
        .global
        .as_ref()
        .map(|spec| limit_spec(spec, "limits.global", problems))
        .unwrap_or_default();
    let mut by_provider = Vec::new();
    for (name, spec) in file.providers.iter().flatten() {
        let path = format!("limits.providers.{name}");
        if !providers.contains(&name.as_str()) {
            if let Some(problem) = absent.problem(name) {
                problems.push(ConfigProblem::new(&path, problem));
            }
            continue;
        }
        by_provider.push((name.clone(), limit_spec(spec, &path, problems)));
    }
    let default_max_tokens = match file.default_max_tokens {
        Some(0) => {
            problems.push(ConfigProblem::new(
                "limits.default_max_tokens",
                "must be at least 1",
            ));
            DEFAULT_MAX_TOKENS
        }
        other => other.unwrap_or(DEFAULT_MAX_TOKENS),
    };
    LimitSettings {
        global,
        providers: by_provider,
        provider_queue: file
            .provider_queue_ms
            .map_or(DEFAULT_PROVIDER_QUEUE, Duration::from_millis),
        default_max_tokens,
        redis: redis_settings(file, env, problems),
    }
}

/// `limits.redis_ca_file`'s certificates (PEM), or `None` with the
/// problem noted.
fn read_ca_file(path: &str, problems: &mut Vec<ConfigProblem>) -> Option<Arc<[u8]>> {
    let read = super::bounded_file::read(Path::new(path), super::bounded_file::MAX_CA_BYTES);
    let problem = match read {
        Ok(pem) if memchr::memmem::find(&pem, b"-----BEGIN CERTIFICATE-----").is_some() => {
            return Some(Arc::from(pem));
        }
        Ok(_) => format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
        Err(err) => format!("cannot read {path}: {err}"),
    };
    problems.push(ConfigProblem::new("limits.redis_ca_file", problem));
    None
}

fn redis_settings(
    file: &LimitsFile,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<RedisSettings> {
    let backend = file.backend.as_deref().unwrap_or("local");
    let on_error = match file.on_redis_error.as_deref() {
        None | Some("open") => OnRedisError::Open,
        Some("closed") => OnRedisError::Closed,
        Some(other) => {
            problems.push(ConfigProblem::new(
                "limits.on_redis_error",
                format!("{} is not \"open\" or \"closed\"", shown_choice(other)),
            ));
            OnRedisError::Open
        }
    };
    // The Redis settings are checked whichever the backend: a mistake
    // found only when the backend is switched would be found too late.
    let lease = seconds(
        file.redis_lease_secs,
        "limits.redis_lease_secs",
        DEFAULT_LEASE,
        problems,
    );
    // A stalled Redis holds each admission and each Redis-limited
    // response's end this long; a lease shorter than it could expire while
    // its own refresh waits.
    let timeout = match file.redis_timeout_ms {
        Some(ms) if !(1..=MAX_REDIS_TIMEOUT_MS).contains(&ms) => {
            problems.push(ConfigProblem::new(
                "limits.redis_timeout_ms",
                format!("must be from 1 to {MAX_REDIS_TIMEOUT_MS}"),
            ));
            DEFAULT_REDIS_TIMEOUT
        }
        other => other.map_or(DEFAULT_REDIS_TIMEOUT, Duration::from_millis),
    };
    if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
        problems.push(ConfigProblem::new(
            "limits.redis_lease_secs",
            format!(
                "must be from {} to {} seconds",
                MIN_LEASE.as_secs_f64(),
                MAX_LEASE.as_secs()
            ),
        ));
    } else if timeout >= lease {
        problems.push(ConfigProblem::new(
            "limits.redis_lease_secs",
            format!(
                "must be longer than limits.redis_timeout_ms ({} ms), or a lease could \
                 expire while its refresh waits",
                timeout.as_millis()
            ),
        ));
    }
    let prefix = file
        .redis_key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_REDIS_PREFIX.into());
    if prefix.is_empty() || prefix.len() > 128 || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        problems.push(ConfigProblem::new(
            "limits.redis_key_prefix",
            "must be 1 to 128 visible ASCII characters (no spaces): it starts every key, so \
             gateways sharing one Redis keep their counts apart",
        ));
    }
    // Read whichever the backend, like the settings above.
    let ca_pem = file
        .redis_ca_file
        .as_deref()
        .map(|path| read_ca_file(path, problems));
    // Checked whichever the backend too: a secret pasted in place of a
    // name must not pass until the day the backend becomes "redis". Only
    // a valid name is ever shown.
    let url_var = file
        .redis_url_env
        .as_deref()
        .filter(|var| check_env_name("limits.redis_url_env", var, problems));
    let for_redis = match backend {
        "local" => false,
        "redis" => true,
        other => {
            problems.push(ConfigProblem::new(
                "limits.backend",
                format!("{} is not \"local\" or \"redis\"", shown_choice(other)),
            ));
            false
        }
    };
    let from_env =
        url_var.and_then(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    // A URL given is checked whichever the backend, as the settings above
    // are: switching to "redis" must not fail on a value `--check` passed.
    let (url, source) = match (from_env, &file.redis_url) {
        (Some((var, url)), _) => (url, format!("limits.redis_url_env ({var})")),
        (None, Some(url)) => (url.clone(), "limits.redis_url".to_string()),
        (None, None) if !for_redis => return None,
        (None, None) => {
            // Name the variable the operator meant to set, if any: it is
            // the usual way to give the URL, and the likelier miss.
            let message = match url_var {
                Some(var) => format!(
                    "required when limits.backend is \"redis\": limits.redis_url_env names {var}, which is not set (or blank), and limits.redis_url is not given"
                ),
                None => "required when limits.backend is \"redis\"".to_string(),
            };
            problems.push(ConfigProblem::new("limits.redis_url", message));
            return None;
        }
    };
    let url = url.trim();
    let ca_pem = match ca_pem {
        None => None,
        Some(None) => return None,
        Some(Some(_))
            if !url
                .get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("rediss://")) =>
        {
            problems.push(ConfigProblem::new(
                "limits.redis_ca_file",
                format!(
                    "is for a Redis reached over TLS, but {source} does not begin with rediss://"
                ),
            ));
            return None;
        }
        Some(pem) => pem,
    };
    let client = crate::limits::redis::client(url, ca_pem.as_deref());
    // The Redis client takes port 0, where no connection can succeed.
    if let Ok(client) = &client
        && redis_port(client) == Some(0)
    {
        problems.push(ConfigProblem::new(
            source,
            "has port 0: give Redis's port (6379 unless it was changed)",
        ));
        return None;
    }
    if let Err(err) = client {
        // The URL may hold a password: name the problem, not the URL. A
        // URL that is fine without the certificates leaves the fault with
        // them (what the client says of them is no secret).
        let problem = match ca_pem {
            Some(_) if crate::limits::redis::client(url, None).is_ok() => {
                ConfigProblem::new("limits.redis_ca_file", err.to_string())
            }
            _ => ConfigProblem::new(
                source,
                "is not a Redis URL like redis://127.0.0.1:6379 (or rediss://host:port for TLS)",
            ),
        };
        problems.push(problem);
        return None;
    }
    if !for_redis {
        return None;
    }
    Some(RedisSettings {
        url: url.to_string(),
        ca_pem,
        prefix,
        timeout,
        lease,
        on_error,
    })
}

/// The TCP port a Redis client connects to (none for a Unix socket).
fn redis_port(client: &redis::Client) -> Option<u16> {
    match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(_, port) | redis::ConnectionAddr::TcpTls { port, .. } => {
            Some(*port)
        }
        _ => None,
    }
}

/// A value given for a setting with a few named choices, as a problem
/// shows it: quoted when it looks like a mistyped choice, else by its
/// length only (a Redis URL, with its password, pasted in the wrong line).
fn shown_choice(value: &str) -> String {
    let word = value.len() <= 16
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if word {
        format!("{value:?}")
    } else {
        format!(
            "a value of {} characters (not shown)",
            value.chars().count()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_beyond_what_is_counted_is_held_at_the_largest() {
        let file = LimitSpecFile {
            requests_per_day: Some(100_000_000_000),
            concurrent_requests: Some(u64::from(u32::MAX)),
            tokens_per_day: Some(100_000_000_000),
            ..LimitSpecFile::default()
        };
        let mut problems = Vec::new();
        let spec = limit_spec(&file, "limits.global", &mut problems);
        assert!(problems.is_empty());
        assert_eq!(spec.requests_per_day.map(u32::from), Some(u32::MAX));
        assert_eq!(spec.concurrent_requests.map(u32::from), Some(u32::MAX));
        assert_eq!(spec.tokens_per_day.map(u64::from), Some(100_000_000_000));
        let file = LimitSpecFile {
            tokens_per_minute: Some(i64::MAX as u64),
            tokens_per_day: Some(MAX_TOKENS_PER_DAY + 1),
            ..LimitSpecFile::default()
        };
        let spec = limit_spec(&file, "limits.global", &mut problems);
        assert!(problems.is_empty());
        let held = |limit: Option<NonZeroU64>| limit.map(u64::from);
        assert_eq!(held(spec.tokens_per_minute), Some(MAX_TOKENS_PER_MINUTE));
        assert_eq!(held(spec.tokens_per_day), Some(MAX_TOKENS_PER_DAY));
    }

    #[test]
    fn a_redis_url_with_port_0_is_refused() {
        let file = LimitsFile {
            backend: Some("redis".into()),
            redis_url: Some("redis://:hunter2@127.0.0.1:0/2".into()),
            ..LimitsFile::default()
        };
        let mut problems = Vec::new();
        let settings = redis_settings(&file, &|_| None, &mut problems);
        assert!(settings.is_none());
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            ["limits.redis_url: has port 0: give Redis's port (6379 unless it was changed)"]
        );
        let file = LimitsFile {
            redis_url: Some("redis://127.0.0.1:6380/2".into()),
            ..file
        };
        assert!(redis_settings(&file, &|_| None, &mut Vec::new()).is_some());
    }
}
