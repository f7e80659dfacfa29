//! Presets + file + environment into a validated [`Config`]; every problem is
//! collected with its key path so `--check` can print them all at once.

use super::aliases::alias_specs;
use super::keys::client_keys;
use super::limits::limit_settings;
use super::parse::parse;
use super::providers::{build_provider, merge, preset_drafts};
use super::settings::{breaker_settings, retry_settings, seconds};
use super::{
    Config, ConfigErrors, ConfigProblem, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
};
use crate::limits::{Limits, ScopeRegistry};
use crate::proxy::breaker::BreakerRegistry;
use crate::proxy::route::RouteTable;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Builds the configuration from a file's text (empty for none) and an
/// environment lookup (a closure, so tests need not touch the process env).
pub fn resolve(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    resolve_reusing(text, env, None)
}

/// Like [`resolve`], keeping the breaker state of `previous`'s targets that
/// the new configuration leaves unchanged.
pub fn resolve_reusing(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    previous: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let mut parsed = parse(text, &mut problems);
    let unreadable = std::mem::take(&mut parsed.unreadable);
    let read_problems = problems.len();

    let listen = parsed.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse().unwrap_or_else(|_| {
        problems.push(ConfigProblem::new(
            "server.listen",
            format!("{listen:?} is not an address like 127.0.0.1:8080"),
        ));
        DEFAULT_LISTEN.parse().expect("default address parses")
    });
    let max_body_bytes = byte_count(
        parsed.server.max_body_bytes,
        "server.max_body_bytes",
        DEFAULT_MAX_BODY_BYTES,
        &mut problems,
    );
    let max_response_bytes = byte_count(
        parsed.server.max_response_bytes,
        "server.max_response_bytes",
        DEFAULT_MAX_RESPONSE_BYTES,
        &mut problems,
    );
    let drain = seconds(
        parsed.server.drain_secs,
        "server.drain_secs",
        Duration::from_secs(30),
        &mut problems,
    );
    let sse_keepalive = match parsed.server.sse_keepalive_secs {
        Some(0.0) => None,
        other => Some(seconds(
            other,
            "server.sse_keepalive_secs",
            Duration::from_secs(15),
            &mut problems,
        )),
    };
    let client_idle = match parsed.server.client_idle_secs {
        Some(0.0) => None,
        other => Some(seconds(
            other,
            "server.client_idle_secs",
            Duration::from_secs(75),
            &mut problems,
        )),
    };
    let metrics_listen = parsed.server.metrics_listen.as_deref().and_then(|addr| {
        addr.parse()
            .map_err(|_| {
                problems.push(ConfigProblem::new(
                    "server.metrics_listen",
                    format!("{addr:?} is not an address like 0.0.0.0:9090"),
                ))
            })
            .ok()
    });
    let retry = retry_settings(&parsed.retry, &mut problems);
    let breaker = breaker_settings(&parsed.breaker, &mut problems);

    let mut drafts = preset_drafts();
    for (name, file) in parsed.providers {
        merge(&mut drafts, name, file, &mut problems);
    }

    let mut fingerprint = Sha256::new();
    fingerprint.update(text.as_bytes());
    let discovered = previous.map_or_else(Default::default, |p| p.discovered.clone());
    let mut providers = Vec::new();
    for draft in drafts.into_iter().filter(|d| d.enabled) {
        if let Some(provider) = build_provider(draft, env, &discovered, &mut problems) {
            fingerprint.update(provider.name.as_bytes());
            fingerprint.update(provider.base_url.as_bytes());
            fingerprint.update(provider.keys.len().to_le_bytes());
            if provider.models_refresh.is_some() {
                // The catalogue is an input too once a refresh adds to it.
                for model in &provider.models {
                    fingerprint.update(model.as_bytes());
                    fingerprint.update([0]);
                }
            }
            providers.push(Arc::new(provider));
        }
    }

    let aliases = alias_specs(parsed.aliases, &providers, &mut problems);

    let provider_names: Vec<&str> = providers.iter().map(|p| &*p.name).collect();
    let limit_settings = limit_settings(&parsed.limits, &provider_names, env, &mut problems);

    // Routes are built before the checks end: keys name the models they may use.
    let mut breakers = BreakerRegistry::new(breaker, previous.map(|p| &p.breakers));
    let routes = RouteTable::build(&providers, &aliases, &mut breakers);
    breakers.finish();
    let mut registry = ScopeRegistry::new(previous.map(|p| p.limits.registry()));
    let keys = client_keys(parsed.keys, env, &routes, &mut registry, &mut problems);
    // A value that could not be read is reported once, as that: a later
    // check that then finds it missing would only say it again.
    let mut index = 0;
    problems.retain(|problem| {
        index += 1;
        index <= read_problems || !unreadable.iter().any(|path| is_within(&problem.path, path))
    });
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let keys_limited = keys.any_limits();
    let limits = Limits::new(
        limit_settings,
        registry,
        keys_limited,
        previous.map(|p| &p.limits),
    )
    .map_err(|err| ConfigErrors(vec![ConfigProblem::new("limits.redis_url", err)]))?;
    let digest = fingerprint.finalize();
    Ok(Config {
        listen,
        max_body_bytes,
        max_response_bytes,
        drain,
        sse_keepalive,
        client_idle,
        metrics_listen,
        retry,
        providers,
        routes,
        breakers,
        keys,
        limits,
        source: None,
        fingerprint: digest[..6].iter().map(|b| format!("{b:02x}")).collect(),
        discovered,
    })
}

/// Whether key path `path` is `outer` or inside it.
fn is_within(path: &str, outer: &str) -> bool {
    path.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// A size in bytes, at least 1.
fn byte_count(
    value: Option<u64>,
    path: &str,
    default: usize,
    problems: &mut Vec<ConfigProblem>,
) -> usize {
    match value {
        None => default,
        Some(0) => {
            problems.push(ConfigProblem::new(path, "must be at least 1"));
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    }
}
