//! Presets + file + environment into a validated [`Config`]; every problem is
//! collected with its key path so `--check` can print them all at once.

use super::aliases::alias_specs;
use super::env_read::EnvReads;
use super::keys::client_keys;
use super::limits::limit_settings;
use super::parse::parse;
use super::providers::{AbsentProviders, build_provider, merge_provider_table, preset_drafts};
use super::server_settings::server_settings;
use super::settings::{breaker_settings, retry_settings};
use super::{Config, ConfigErrors, ConfigProblem};
use crate::limits::{Limits, ScopeRegistry};
use crate::proxy::breaker::BreakerRegistry;
use crate::proxy::route::RouteTable;
use sha2::{Digest, Sha256};
use std::sync::Arc;

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
    let reads = EnvReads::new(env);
    let env = &|name: &str| reads.get(name);
    let mut problems = Vec::new();
    let mut parsed = parse(text, &mut problems);
    let unreadable = std::mem::take(&mut parsed.unreadable);
    let read_problems = problems.len();
    let mut notes = super::limit_notes::limit_notes(&parsed.limits, &parsed.keys);
    notes.extend(super::redundant_settings::redundant_settings(
        &parsed.providers,
        &parsed.aliases,
    ));

    let server = server_settings(&parsed.server, &mut problems);
    let retry = retry_settings(&parsed.retry, &mut problems);
    let breaker = breaker_settings(&parsed.breaker, &mut problems);

    let mut drafts = preset_drafts();
    for (name, file) in parsed.providers {
        merge_provider_table(&mut drafts, name, file, &mut problems);
    }

    let mut fingerprint = Sha256::new();
    fingerprint.update(text.as_bytes());
    let discovered = previous.map_or_else(Default::default, |p| p.discovered.clone());
    let mut providers = Vec::new();
    let mut absent = AbsentProviders::default();
    for draft in drafts {
        if !draft.enabled {
            absent.disabled(&draft.name);
            // What the file says is checked all the same (not the
            // environment, which may be unset while it is off): turning
            // the provider back on must not fail on a problem that
            // `--check` passed.
            let _ = build_provider(draft, &|_| None, &discovered, &mut problems);
            continue;
        }
        let name = draft.name.clone();
        let Some(provider) = build_provider(draft, env, &discovered, &mut problems) else {
            absent.refused(&name);
            continue;
        };
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

    let aliases = alias_specs(parsed.aliases, &providers, &absent, &mut problems);

    let provider_names: Vec<&str> = providers.iter().map(|p| &*p.name).collect();
    let limit_settings =
        limit_settings(&parsed.limits, &provider_names, &absent, env, &mut problems);

    // Routes are built before the checks end: keys name the models they may use.
    let mut breakers = BreakerRegistry::new(breaker, previous.map(|p| &p.breakers));
    let routes = RouteTable::build(&providers, &aliases, &mut breakers);
    breakers.drop_unclaimed();
    let mut registry = ScopeRegistry::new(previous.map(|p| p.limits.registry()));
    let keys = client_keys(
        parsed.keys,
        env,
        &routes,
        &mut registry,
        &unreadable,
        &mut problems,
    );
    // A value that could not be read is reported once, as that: a later
    // check that then finds it missing would only say it again.
    let mut index = 0;
    problems.retain(|problem| {
        index += 1;
        index <= read_problems || !unreadable.iter().any(|path| is_within(&problem.path, path))
    });
    // A variable that is not text is reported as that, not also as unset
    // by the setting that reads it.
    let not_text = reads.not_text();
    problems.retain(|problem| {
        !not_text.iter().any(|var| {
            let var = &var.path;
            problem.message.contains(&format!("{var} is not set"))
                || problem
                    .message
                    .contains(&format!("{var}, which is not set"))
        })
    });
    problems.extend(not_text);
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    notes.extend(super::service_notes::unserved_notes(
        &providers, &routes, &keys,
    ));
    notes.extend(super::key_exposure::exposure_notes(&providers, &keys));
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
        server,
        retry,
        providers,
        routes,
        breakers,
        keys,
        limits,
        source: None,
        source_text: Arc::from(text),
        fingerprint: digest[..6].iter().map(|b| format!("{b:02x}")).collect(),
        discovered,
        notes,
    })
}

/// Whether key path `path` is `outer` or inside it.
fn is_within(path: &str, outer: &str) -> bool {
    path.strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match resolve(text, &|_| None) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_redis_backend_without_a_url_names_the_variable_that_is_not_set() {
        let found =
            problems("[limits]\nbackend = \"redis\"\nredis_url_env = \"KIMI_GATEWAY_REDIS_URL\"\n");
        assert!(
            found.iter().any(|p| p.starts_with("limits.redis_url: ")
                && p.contains("names KIMI_GATEWAY_REDIS_URL, which is not set")),
            "{found:?}"
        );
        let found = problems("[limits]\nbackend = \"redis\"\n");
        assert!(
            found.contains(
                &"limits.redis_url: required when limits.backend is \"redis\"".to_string()
            ),
            "{found:?}"
        );
    }

    /// Every problem of an alias target, and of a key without its secret,
    /// is reported in one pass, not just the first.
    #[test]
    fn each_member_of_a_target_or_a_key_is_checked_on_its_own() {
        let mut found = problems(
            "[aliases.kimi]\ntargets = [\n\
             { provider = \"nobody\", model = \"\", weight = 0, priority = 0 },\n\
             { provider = \"moonshot\", model = \"\", weight = 0, priority = 0 },\n]\n\
             [keys.a]\nsecret_env = \"UNSET_TEAM_KEY\"\nmodels = [\"nope\"]\n",
        );
        found.retain(|p| p.starts_with("aliases.") || p.starts_with("keys."));
        found.sort();
        let paths: Vec<&str> = found.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "aliases.kimi.targets[0].model",
                "aliases.kimi.targets[0].provider",
                "aliases.kimi.targets[0].weight",
                "aliases.kimi.targets[1].model",
                "aliases.kimi.targets[1].weight",
                "keys.a.models[0]",
                "keys.a.secret_env",
            ],
            "{found:?}"
        );
    }

    /// A choice setting given something that is no mistyped choice (a
    /// Redis URL with its password) is not quoted; a near miss is.
    #[test]
    fn a_choice_is_quoted_only_when_it_looks_like_one() {
        let found =
            problems("[limits]\nbackend = \"redis://:hunter2@h:1\"\non_redis_error = \"clsed\"\n");
        assert!(
            found.contains(&"limits.backend: a value of 20 characters (not shown) is not \"local\" or \"redis\"".to_string()),
            "{found:?}"
        );
        assert!(
            found.contains(
                &"limits.on_redis_error: \"clsed\" is not \"open\" or \"closed\"".to_string()
            ),
            "{found:?}"
        );
    }

    /// A URL pasted where the variable's name belongs is refused with the
    /// local backend as with Redis, and never shown.
    #[test]
    fn a_redis_url_env_that_is_no_name_is_refused_whichever_the_backend() {
        for backend in ["local", "redis"] {
            let found = problems(&format!(
                "[limits]\nbackend = \"{backend}\"\nredis_url_env = \"redis://:hunter2@h:1\"\n"
            ));
            assert!(
                found
                    .iter()
                    .any(|p| p.starts_with("limits.redis_url_env: ")),
                "{backend}: {found:?}"
            );
            assert!(found.iter().all(|p| !p.contains("hunter2")), "{found:?}");
        }
    }

    /// A Redis URL given is checked with `local` limits too, from the file
    /// or from its variable, so switching the backend cannot fail on it.
    #[test]
    fn a_redis_url_is_checked_whichever_the_backend() {
        let found = problems("[limits]\nbackend = \"local\"\nredis_url = \"garbage\"\n");
        assert_eq!(
            found,
            [
                "limits.redis_url: is not a Redis URL like redis://127.0.0.1:6379 (or \
              rediss://host:port for TLS)"
            ]
        );
        let env = |v: &str| (v == "LIMITS_URL").then(|| "redis://:pw@h:0".to_string());
        let text = "[limits]\nredis_url_env = \"LIMITS_URL\"\n";
        let found: Vec<String> = match resolve(text, &env) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(
            found,
            [
                "limits.redis_url_env (LIMITS_URL): has port 0: give Redis's port (6379 unless it \
              was changed)"
            ]
        );
        assert!(problems("[limits]\nredis_url = \"redis://127.0.0.1:6379/1\"\n").is_empty());
    }

    /// A disabled provider's own settings are checked as if it were on,
    /// so turning it back on cannot fail on them.
    #[test]
    fn a_disabled_providers_settings_are_checked_all_the_same() {
        let found = problems(
            "[providers.moonshot]\nenabled = false\nbase_url = \"ftp://x\"\n\
             headers = { \"Content-Encoding\" = \"gzip\" }\n\
             [providers.moonshot.timeouts]\nconnect_secs = -1\n",
        );
        for path in [
            "base_url",
            "headers.Content-Encoding",
            "timeouts.connect_secs",
        ] {
            let path = format!("providers.moonshot.{path}: ");
            assert!(
                found.iter().any(|p| p.starts_with(&path)),
                "{path} {found:?}"
            );
        }
        // A preset switched off as it is has nothing to report.
        assert!(problems("[providers.moonshot]\nenabled = false\n").is_empty());
    }

    /// A table naming a disabled preset says it is disabled; one naming a
    /// provider refused for its own problem adds no second line about it.
    #[test]
    fn a_provider_named_but_disabled_or_refused_is_reported_for_what_it_is() {
        let disabled = "[providers.moonshot]\nenabled = false\n\
            [aliases.kimi]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2\" }]\n\
            [limits.providers.moonshot]\nrequests_per_minute = 10\n";
        let mut found = problems(disabled);
        found.sort();
        let says = "provider \"moonshot\" is disabled (providers.moonshot.enabled = false)";
        assert_eq!(
            found,
            [
                format!("aliases.kimi.targets[0].provider: {says}"),
                format!("limits.providers.moonshot: {says}"),
            ],
        );
        let refused = "[providers.moonshot]\nbase_url = \"ftp://x\"\n\
            [aliases.kimi]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2\" }]\n\
            [limits.providers.moonshot]\nrequests_per_minute = 10\n";
        let found = problems(refused);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("providers.moonshot.base_url: "),
            "{found:?}"
        );
        let unknown = "[aliases.kimi]\ntargets = [{ provider = \"moonshoot\", model = \"k\" }]\n";
        assert_eq!(
            problems(unknown),
            ["aliases.kimi.targets[0].provider: unknown provider \"moonshoot\""]
        );
    }

    #[test]
    fn a_client_key_variable_that_is_blank_is_called_blank() {
        let text = "[keys.team-a]\nsecret_env = \"TEAM_A_KEY\"\n";
        for (value, expected) in [(None, "not set"), (Some(" \t"), "blank")] {
            let env = |var: &str| {
                (var == "TEAM_A_KEY")
                    .then_some(value)
                    .flatten()
                    .map(String::from)
            };
            let found: Vec<String> = match resolve(text, &env) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
            };
            assert_eq!(
                found,
                [format!(
                    "keys.team-a.secret_env: environment variable TEAM_A_KEY is {expected}"
                )]
            );
        }
    }

    #[test]
    fn the_body_total_defaults_to_256_mib_or_the_body_limit_when_larger() {
        let config = resolve("", &|_| None).unwrap();
        assert_eq!(config.server.max_body_bytes_total, 256 * 1024 * 1024);
        assert_eq!(config.server.max_connections, None);
        let config = resolve("[server]\nmax_body_bytes = 300000000\n", &|_| None).unwrap();
        assert_eq!(config.server.max_body_bytes_total, 300_000_000);
        let config = resolve(
            "[server]\nmax_body_bytes_total = 5000\nmax_body_bytes = 5000\nmax_connections = 9\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            (
                config.server.max_body_bytes_total,
                config.server.max_connections
            ),
            (5000, Some(9))
        );
    }

    #[test]
    fn a_key_may_hold_all_but_one_largest_body_of_the_total_by_default() {
        let config = resolve("", &|_| None).unwrap();
        assert_eq!(config.server.max_body_bytes_per_key, 224 * 1024 * 1024);
        let config = resolve(
            "[server]\nmax_body_bytes = 5000\nmax_body_bytes_total = 8000\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            config.server.max_body_bytes_per_key, 5000,
            "never less than one largest body"
        );
        let config = resolve(
            "[server]\nmax_body_bytes = 5000\nmax_body_bytes_total = 20000\nmax_body_bytes_per_key = 20000\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(config.server.max_body_bytes_per_key, 20000);
        for (per_key, total) in [(4999, 20000), (20001, 20000)] {
            assert_eq!(
                problems(&format!(
                    "[server]\nmax_body_bytes = 5000\nmax_body_bytes_total = {total}\n\
                     max_body_bytes_per_key = {per_key}\n"
                )),
                [format!(
                    "server.max_body_bytes_per_key: {per_key} is not between \
                     server.max_body_bytes (5000) and server.max_body_bytes_total ({total})"
                )]
            );
        }
    }

    #[test]
    fn the_answer_total_defaults_to_256_mib_or_the_answer_limit_when_larger() {
        let config = resolve("", &|_| None).unwrap();
        assert_eq!(config.server.max_answer_bytes_total, 256 * 1024 * 1024);
        let config = resolve("[server]\nmax_response_bytes = 300000000\n", &|_| None).unwrap();
        assert_eq!(config.server.max_answer_bytes_total, 300_000_000);
        let config = resolve(
            "[server]\nmax_answer_bytes_total = 5000\nmax_response_bytes = 5000\n",
            &|_| None,
        )
        .unwrap();
        assert_eq!(config.server.max_answer_bytes_total, 5000);
        assert_eq!(
            problems("[server]\nmax_response_bytes = 2000\nmax_answer_bytes_total = 1000\n"),
            [
                "server.max_answer_bytes_total: 1000 is less than server.max_response_bytes (2000), the least it may be"
            ]
        );
        assert_eq!(
            problems("[server]\nmax_answer_bytes_total = 0\n"),
            [
                "server.max_answer_bytes_total: 0 is less than server.max_response_bytes (67108864), the least it may be"
            ]
        );
    }

    #[test]
    fn the_client_send_buffer_defaults_to_256_kib_and_0_leaves_it_to_the_kernel() {
        let config = resolve("", &|_| None).unwrap();
        assert_eq!(config.server.client_send_buffer, Some(256 * 1024));
        let config = resolve("[server]\nclient_send_buffer_bytes = 0\n", &|_| None).unwrap();
        assert_eq!(config.server.client_send_buffer, None);
        let config = resolve("[server]\nclient_send_buffer_bytes = 1048576\n", &|_| None).unwrap();
        assert_eq!(config.server.client_send_buffer, Some(1024 * 1024));
        assert_eq!(
            problems("[server]\nclient_send_buffer_bytes = 4294967296\n"),
            [
                "server.client_send_buffer_bytes: 4294967296 is more than 2147483647, the most it may be"
            ]
        );
        assert_eq!(
            problems("[server]\nclient_send_buffer_bytes = 32768\n"),
            [
                "server.client_send_buffer_bytes: 32768 is less than 65536, the least it may be (0: the kernel's own)"
            ]
        );
    }

    #[test]
    fn a_providers_receive_buffer_defaults_to_256_kib_and_is_checked() {
        assert_eq!(
            problems("[providers.moonshot]\nreceive_buffer_bytes = 1000\n"),
            [
                "providers.moonshot.receive_buffer_bytes: 1000 is less than 65536, the least it may be (0: the kernel's own)"
            ]
        );
        for text in ["", "[providers.moonshot]\nreceive_buffer_bytes = 0\n"] {
            assert!(resolve(text, &|_| None).is_ok(), "{text}");
        }
    }

    #[test]
    fn a_body_total_under_the_body_limit_and_a_zero_cap_are_refused() {
        assert_eq!(
            problems("[server]\nmax_body_bytes = 2000\nmax_body_bytes_total = 1000\n"),
            ["server.max_body_bytes_total: 1000 is less than server.max_body_bytes (2000)"]
        );
        assert_eq!(
            problems("[server]\nmax_connections = 0\nmax_body_bytes_total = 0\n"),
            [
                "server.max_body_bytes_total: must be at least 1",
                "server.max_connections: must be at least 1"
            ]
        );
    }

    #[test]
    fn a_setting_that_0_turns_off_says_so_when_refused() {
        assert_eq!(
            problems("[server]\nsse_keepalive_secs = -5\n[retry]\nmax_retry_after_secs = -1\n"),
            [
                "server.sse_keepalive_secs: must be 0 (off) or a number of seconds from 0.001 (a millisecond) to less than 1,000,000,000",
                "retry.max_retry_after_secs: must be 0 (never wait) or a number of seconds from 0.001 (a millisecond) to less than 1,000,000,000"
            ]
        );
        // A positive duration too short to mean anything: a keep-alive
        // comment without pause, every connection closed at once.
        assert_eq!(
            problems("[server]\nsse_keepalive_secs = 1e-300\nclient_idle_secs = 0.0009\ndrain_secs = 0.001\n").len(),
            2
        );
        assert!(problems("[server]\nsse_keepalive_secs = 0\nclient_idle_secs = 0\n").is_empty());
    }

    #[test]
    fn a_name_with_a_line_break_stays_on_its_problem_line() {
        let found = problems(
            "[keys.\"a\\nb\"]\nsecret_sha256 = \"00\"\n[providers.\"x\\ny\"]\nkind = \"moonshot\"\n",
        );
        assert!(found.iter().all(|line| !line.contains('\n')), "{found:?}");
        assert!(
            found
                .iter()
                .any(|line| line.starts_with("keys.a\\nb: key names")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|line| line.starts_with("providers.x\\ny: provider names")),
            "{found:?}"
        );
    }

    #[test]
    fn the_metrics_listener_needs_a_port_of_its_own() {
        for (server, refused) in [
            (
                "listen = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.1:9000\"",
                true,
            ),
            (
                "listen = \"127.0.0.1:9000\"\nmetrics_listen = \"0.0.0.0:9000\"",
                true,
            ),
            (
                "listen = \"0.0.0.0:9000\"\nmetrics_listen = \"127.0.0.1:9000\"",
                true,
            ),
            (
                "listen = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.2:9000\"",
                false,
            ),
            (
                "listen = \"127.0.0.1:9000\"\nmetrics_listen = \"127.0.0.1:9001\"",
                false,
            ),
        ] {
            let found = problems(&format!("[server]\n{server}\n"));
            let named = found
                .iter()
                .any(|p| p.starts_with("server.metrics_listen: ") && p.contains("port of its own"));
            assert_eq!(named, refused, "{server}: {found:?}");
        }
    }
}
