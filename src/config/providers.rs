//! Providers: presets merged with the file's `[providers.*]` tables, then
//! resolved against the environment (base URL overrides, keys) and validated.

use super::base_url::{check_base_url, normalized_base_url};
use super::env_name::check_env_name;
use super::file::{ProviderFile, TimeoutsFile};
use super::presets::PRESETS;
use super::settings::{seconds, socket_buffer};
use super::{
    ApiKey, ConfigProblem, DEFAULT_PROVIDER_RECEIVE_BUFFER_BYTES, DiscoveredModels, MAX_NAME_BYTES,
    ModelsRefresh, Provider, Timeouts,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::Duration;

/// A provider while presets and the file are merged.
pub struct Draft {
    pub name: String,
    pub enabled: bool,
    base_url: Option<String>,
    base_url_env: Option<String>,
    key_envs: Vec<String>,
    models: Vec<String>,
    headers: Vec<(String, String)>,
    timeouts: TimeoutsFile,
    receive_buffer_bytes: Option<u64>,
    ask_stream_usage: bool,
    pass_prompt_filter_chunks: bool,
    refresh_models_secs: Option<f64>,
    refresh_models_match: Option<Vec<String>>,
}

/// Why a provider name that a table refers to has no provider: told
/// apart so an alias or a limit naming a disabled preset says so, and one
/// naming a provider refused for its own problems adds no second line.
#[derive(Default)]
pub struct AbsentProviders {
    disabled: Vec<String>,
    refused: Vec<String>,
}

impl AbsentProviders {
    pub fn disabled(&mut self, name: &str) {
        self.disabled.push(name.to_string());
    }

    pub fn refused(&mut self, name: &str) {
        self.refused.push(name.to_string());
    }

    /// The problem of naming `name`, which is not a provider; `None` when
    /// the provider's own problems are already reported.
    pub fn problem(&self, name: &str) -> Option<String> {
        if self.refused.iter().any(|n| n == name) {
            None
        } else if self.disabled.iter().any(|n| n == name) {
            Some(format!(
                "provider {name:?} is disabled (providers.{name}.enabled = false)"
            ))
        } else {
            Some(format!("unknown provider {name:?}"))
        }
    }
}

/// The presets, as drafts the file can change.
pub fn preset_drafts() -> Vec<Draft> {
    PRESETS
        .iter()
        .map(|p| Draft {
            name: p.name.to_string(),
            enabled: true,
            base_url: Some(p.base_url.to_string()),
            base_url_env: Some(p.base_url_env.to_string()),
            key_envs: vec![p.api_key_env.to_string()],
            models: p.models.iter().map(|m| m.to_string()).collect(),
            headers: Vec::new(),
            timeouts: TimeoutsFile::default(),
            receive_buffer_bytes: None,
            ask_stream_usage: p.ask_stream_usage,
            pass_prompt_filter_chunks: false,
            refresh_models_secs: None,
            refresh_models_match: None,
        })
        .collect()
}

/// The file's `[providers.NAME]` table laid over `drafts`: over the preset
/// of that name, or added as a provider of its own (which must then name
/// its base URL and key variable); each bad value a problem.
pub fn merge_provider_table(
    drafts: &mut Vec<Draft>,
    name: String,
    file: ProviderFile,
    problems: &mut Vec<ConfigProblem>,
) {
    let path = format!("providers.{name}");
    // A provider's name is a metric label and in every access line.
    let valid_name = (1..=MAX_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        problems.push(ConfigProblem::new(
            &path,
            format!(
                "provider names use lowercase letters, digits, '-' and '_', at most {MAX_NAME_BYTES} of them"
            ),
        ));
        return;
    }
    let index = match drafts.iter().position(|d| d.name == name) {
        Some(index) => index,
        None => {
            for (field, given) in [
                ("base_url", file.base_url.is_some()),
                (
                    "api_key_env",
                    file.api_key_env.is_some() || file.api_key_envs.is_some(),
                ),
            ] {
                if !given {
                    let message = if field == "base_url" && file.base_url_env.is_some() {
                        "required for a provider that is not a preset, base_url_env or not \
                         (it is the address used while the variable is not set)"
                    } else {
                        "required for a provider that is not a preset"
                    };
                    problems.push(ConfigProblem::new(format!("{path}.{field}"), message));
                }
            }
            drafts.push(Draft {
                name,
                enabled: true,
                base_url: None,
                base_url_env: None,
                key_envs: Vec::new(),
                models: Vec::new(),
                headers: Vec::new(),
                timeouts: TimeoutsFile::default(),
                receive_buffer_bytes: None,
                ask_stream_usage: false,
                pass_prompt_filter_chunks: false,
                refresh_models_secs: None,
                refresh_models_match: None,
            });
            drafts.len() - 1
        }
    };
    let draft = &mut drafts[index];
    if let Some(enabled) = file.enabled {
        draft.enabled = enabled;
    }
    if file.base_url.is_some() {
        draft.base_url = file.base_url;
    }
    if let Some(var) = file.base_url_env {
        // An invalid name is dropped so that nothing quotes it later.
        draft.base_url_env =
            check_env_name(&format!("{path}.base_url_env"), &var, problems).then_some(var);
    }
    let key_envs = match (file.api_key_env, file.api_key_envs) {
        (Some(_), Some(_)) => {
            problems.push(ConfigProblem::new(
                format!("{path}.api_key_env"),
                "set api_key_env or api_key_envs, not both",
            ));
            None
        }
        (Some(env), None) => {
            check_env_name(&format!("{path}.api_key_env"), &env, problems).then(|| vec![env])
        }
        (None, Some(envs)) => {
            if envs.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("{path}.api_key_envs"),
                    "lists no variable (to stop serving the provider, set enabled = false)",
                ));
            }
            let named = envs.len();
            // One variable named twice would make two targets of one key.
            // Only valid names are compared, so none quoted is a secret;
            // they are compared even when others are not valid, so that
            // one `--check` names every problem of the list, in its order.
            let mut valid: Vec<String> = Vec::new();
            for (i, env) in envs.into_iter().enumerate() {
                let entry = format!("{path}.api_key_envs[{i}]");
                if !check_env_name(&entry, &env, problems) {
                    continue;
                }
                if valid.contains(&env) {
                    problems.push(ConfigProblem::new(
                        entry,
                        format!("names {env} again: list each key's variable once"),
                    ));
                }
                valid.push(env);
            }
            Some(valid).filter(|envs| envs.len() == named)
        }
        (None, None) => None,
    };
    if let Some(envs) = key_envs {
        draft.key_envs = envs;
    }
    if let Some(models) = file.models {
        draft.models = models;
    }
    // Checked here, where their own indices are known (an empty one in
    // `models` is reported when the provider is built).
    for (i, model) in file
        .extra_models
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if let Some(problem) = super::model_id::problem(&model) {
            problems.push(ConfigProblem::new(
                format!("{path}.extra_models[{i}]"),
                problem,
            ));
        } else {
            draft.models.push(model);
        }
    }
    draft.headers = file.headers.unwrap_or_default().into_iter().collect();
    if let Some(t) = file.timeouts {
        draft.timeouts = t;
    }
    if file.receive_buffer_bytes.is_some() {
        draft.receive_buffer_bytes = file.receive_buffer_bytes;
    }
    if let Some(ask) = file.ask_stream_usage {
        draft.ask_stream_usage = ask;
    }
    if let Some(pass) = file.pass_prompt_filter_chunks {
        draft.pass_prompt_filter_chunks = pass;
    }
    if file.refresh_models_secs.is_some() {
        draft.refresh_models_secs = file.refresh_models_secs;
    }
    if file.refresh_models_match.is_some() {
        draft.refresh_models_match = file.refresh_models_match;
    }
}

/// Substrings of the model ids a catalogue refresh takes by default: the
/// gateway serves Kimi models, and a reseller's `/models` lists every
/// maker's.
const DEFAULT_REFRESH_MATCH: &[&str] = &["kimi", "moonshot"];

/// A provider's catalogue refresh, if its `refresh_models_secs` asks for
/// one.
fn models_refresh(
    secs: Option<f64>,
    matches: Option<&[String]>,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<ModelsRefresh> {
    let every = match secs {
        None | Some(0.0) => None,
        Some(secs) if secs.is_finite() && (1.0..1e9).contains(&secs) => {
            Some(Duration::from_secs_f64(secs))
        }
        Some(_) => {
            problems.push(ConfigProblem::new(
                format!("{path}.refresh_models_secs"),
                "must be 0 (off), or at least 1 second and less than 1,000,000,000",
            ));
            None
        }
    };
    let matches: Vec<String> = match matches {
        None => DEFAULT_REFRESH_MATCH
            .iter()
            .map(|m| m.to_string())
            .collect(),
        Some([]) => {
            problems.push(ConfigProblem::new(
                format!("{path}.refresh_models_match"),
                "lists no substring, so no id would be taken ([\"\"] takes every id)",
            ));
            Vec::new()
        }
        Some(given) => given.iter().map(|m| m.to_ascii_lowercase()).collect(),
    };
    every.map(|every| ModelsRefresh { every, matches })
}

pub fn build_provider(
    draft: Draft,
    env: &dyn Fn(&str) -> Option<String>,
    discovered: &DiscoveredModels,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Provider> {
    let path = format!("providers.{}", draft.name);
    let before = problems.len();
    // Sent back in `x-gateway-provider`; names are checked to be
    // `[a-z0-9_-]`, so this fails only for a name already reported.
    let name_header = HeaderValue::from_str(&draft.name);
    let from_env = draft
        .base_url_env
        .as_deref()
        .and_then(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    let (base_url, source) = match (from_env, draft.base_url) {
        (Some((var, url)), file_url) => {
            // The file's URL is checked even while the variable overrides
            // it: a file that `--check` passes where the variable is set
            // must not be refused where it is not.
            if let Some(file_url) = file_url {
                check_base_url(&file_url, format!("{path}.base_url"), problems);
            }
            // The variable named, and where it was named.
            (url, format!("{path}.base_url_env ({var})"))
        }
        (None, Some(url)) => (url, format!("{path}.base_url")),
        (None, None) => return None, // already reported as required
    };
    let base_url = normalized_base_url(&base_url);
    let chat_url = check_base_url(&base_url, source, problems);
    let mut keys = Vec::new();
    for var in &draft.key_envs {
        let Some(secret) = env(var)
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
        else {
            continue;
        };
        match HeaderValue::try_from(format!("Bearer {secret}")) {
            Ok(mut header) => {
                header.set_sensitive(true);
                keys.push(ApiKey {
                    env: var.clone(),
                    secret,
                    header,
                    request_head: bytes::Bytes::new(),
                });
            }
            Err(_) => problems.push(ConfigProblem::new(
                var.as_str(),
                "the key contains characters not allowed in an HTTP header",
            )),
        }
    }
    let mut headers = HeaderMap::new();
    for (name, value) in draft.headers {
        let hpath = format!("{path}.headers.{name}");
        let parsed_name = HeaderName::try_from(name.as_str());
        match (parsed_name, HeaderValue::try_from(value.as_str())) {
            (Ok(n), _) if is_reserved_header(&n) => problems.push(ConfigProblem::new(
                hpath,
                "is set by the gateway and cannot be configured",
            )),
            (Ok(n), _) if n == http::header::CONTENT_ENCODING => problems.push(ConfigProblem::new(
                hpath,
                "would call the plain JSON body the gateway sends compressed",
            )),
            (Ok(n), _) if is_hop_by_hop(&n) => problems.push(ConfigProblem::new(
                hpath,
                "is a field of the connection (hop-by-hop), which the gateway manages itself",
            )),
            // Names ignore case: `X-A` and `x-a` are one field, and one
            // value would be dropped without a word.
            (Ok(n), Ok(_)) if headers.contains_key(&n) => problems.push(ConfigProblem::new(
                hpath,
                "is given twice (header names ignore letter case)",
            )),
            (Ok(n), Ok(v)) => {
                headers.insert(n, v);
            }
            _ => problems.push(ConfigProblem::new(hpath, "not a valid HTTP header")),
        }
    }
    let timeouts = timeouts(&draft.timeouts, &path, problems);
    let receive_buffer = socket_buffer(
        draft.receive_buffer_bytes,
        &format!("{path}.receive_buffer_bytes"),
        DEFAULT_PROVIDER_RECEIVE_BUFFER_BYTES,
        problems,
    );
    let mut models: Vec<String> = Vec::new();
    // A set beside the list: a catalogue of many thousands of ids is
    // checked in linear time, not once per id against every other.
    let mut seen: foldhash::HashSet<String> = foldhash::HashSet::default();
    for (i, model) in draft.models.into_iter().enumerate() {
        if let Some(problem) = super::model_id::problem(&model) {
            problems.push(ConfigProblem::new(format!("{path}.models[{i}]"), problem));
        } else if seen.insert(model.clone()) {
            models.push(model);
        }
    }
    let models_refresh = models_refresh(
        draft.refresh_models_secs,
        draft.refresh_models_match.as_deref(),
        &path,
        problems,
    );
    let configured_models = models.len();
    if let Some(refresh) = &models_refresh
        && let Some(listed) = discovered.get(&draft.name, &base_url)
    {
        let picked = listed.iter().filter(|id| refresh.takes(id));
        for id in picked.take(super::MAX_FOUND_MODELS) {
            if seen.insert(id.clone()) {
                models.push(id.clone());
            }
        }
    }
    if problems.len() > before {
        return None;
    }
    let chat_url = chat_url?;
    for key in &mut keys {
        key.request_head = crate::proxy::upstream_head::fixed_request_head(
            &chat_url.path,
            &chat_url.host,
            &headers,
            &key.header,
        );
    }
    Some(Provider {
        name_header: name_header.ok()?,
        name: draft.name.into(),
        base_url,
        api_key_env: draft.key_envs.join(" or "),
        key_envs: draft.key_envs,
        keys,
        models,
        configured_models,
        headers,
        client: crate::client::Client::with_receive_buffer(
            chat_url.origin.clone(),
            timeouts.connect,
            receive_buffer,
        ),
        chat_url,
        timeouts,
        ask_stream_usage: draft.ask_stream_usage,
        pass_prompt_filter_chunks: draft.pass_prompt_filter_chunks,
        models_refresh,
    })
}

/// Headers a config may not set, because the gateway owns them: it
/// writes each of them on every request, so a configured one would be
/// sent twice (a second `Content-Type` is invalid, and `Accept-Encoding:
/// gzip` would get a compressed body the gateway cannot read).
fn is_reserved_header(name: &HeaderName) -> bool {
    use http::header::*;
    [
        AUTHORIZATION,
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        CONTENT_TYPE,
        ACCEPT,
        ACCEPT_ENCODING,
        USER_AGENT,
    ]
    .contains(name)
        || name == "x-request-id"
}

/// Fields about one connection rather than the request (RFC 9110 7.6.1):
/// `Upgrade` could switch the provider's connection to another protocol,
/// `Expect` would have it wait for a `100 Continue` the gateway does not
/// wait for, and the rest mean nothing to a provider from a configuration.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    use http::header::*;
    [TE, TRAILER, UPGRADE, EXPECT, PROXY_AUTHORIZATION].contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
}

fn timeouts(file: &TimeoutsFile, path: &str, problems: &mut Vec<ConfigProblem>) -> Timeouts {
    let d = Timeouts::default();
    let mut pick = |field: &str, value: Option<f64>, default: Duration| {
        seconds(
            value,
            &format!("{path}.timeouts.{field}"),
            default,
            problems,
        )
    };
    Timeouts {
        connect: pick("connect_secs", file.connect_secs, d.connect),
        first_byte: pick("first_byte_secs", file.first_byte_secs, d.first_byte),
        idle: pick("idle_secs", file.idle_secs, d.idle),
        total: pick("total_secs", file.total_secs, d.total),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ModelsRefresh, resolve, resolve_reusing};
    use std::time::Duration;

    fn keyed(var: &str) -> Option<String> {
        var.ends_with("_API_KEY").then(|| "k".to_string())
    }

    #[test]
    fn configured_headers_may_not_touch_framing_or_the_connection() {
        let text = "[providers.moonshot.headers]\nx-team = \"a\"\nTransfer-Encoding = \"chunked\"\nUpgrade = \"h2c\"\nExpect = \"100-continue\"\nKeep-Alive = \"timeout=5\"\n";
        let problems = resolve(text, &keyed).err().unwrap().0;
        let mut found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        found.sort();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].starts_with("providers.moonshot.headers.Expect: is a field of the connection")
        );
        assert!(
            found[1]
                .starts_with("providers.moonshot.headers.Keep-Alive: is a field of the connection")
        );
        assert!(
            found[2]
                .starts_with("providers.moonshot.headers.Transfer-Encoding: is set by the gateway")
        );
        assert!(
            found[3]
                .starts_with("providers.moonshot.headers.Upgrade: is a field of the connection")
        );
        let config = resolve("[providers.moonshot.headers]\nx-team = \"a\"\n", &keyed).unwrap();
        assert!(config.providers[0].name.as_ref() == "moonshot");
        // One name in two letter cases; a coding the plain body does not have.
        let text = "[providers.moonshot.headers]\nX-Team = \"a\"\nx-team = \"b\"\nContent-Encoding = \"gzip\"\n";
        let mut found: Vec<String> = resolve(text, &keyed)
            .err()
            .unwrap()
            .0
            .iter()
            .map(|p| p.to_string())
            .collect();
        found.sort();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with(
                "providers.moonshot.headers.Content-Encoding: would call the plain JSON body"
            ),
            "{found:?}"
        );
        assert!(
            found[1].ends_with("is given twice (header names ignore letter case)"),
            "{found:?}"
        );
    }

    /// Each way a base URL is refused says why, and a password in it is
    /// never printed.
    #[test]
    fn base_urls_are_refused_with_the_reason_and_no_password() {
        for (url, expected) in [
            (
                "ftp://api.example.com/v1",
                "a URL of scheme `ftp` is not an http(s) URL",
            ),
            (
                "api.example.com/v1",
                "a value of 18 characters (not shown) is not an http(s) URL",
            ),
            (
                "https://höst.example/v1",
                "an `https` URL that does not parse (a space, an unclosed `[`",
            ),
            ("http://ho st/v1", "an `http` URL that does not parse"),
            (
                "https://api.example.com/v1/chat/completions/",
                "ends in `/chat/completions`: give the base URL",
            ),
            // A key given where a URL belongs is never echoed.
            ("sk-hunter2", "a value of 10 characters (not shown)"),
            ("ftp://sk-hunter2/x", "a URL of scheme `ftp` is not"),
            (
                "https://api.example.com/v1?api_key=hunter2",
                "\"https://api.example.com/v1?***\" has a query",
            ),
            (
                "https://api.example.com/v1#hunter2",
                "\"https://api.example.com/v1#***\" has a fragment",
            ),
            (
                "https://user:hunter2@api.example.com/v1",
                "\"https://***@api.example.com/v1\" holds a user name or password",
            ),
            (
                "https://:secret@api.example.com",
                "\"https://***@api.example.com\"",
            ),
            ("http://127.0.0.1:99999/v1", "has no valid port"),
            ("http://api.example.com:abc/v1", "has no valid port"),
            ("http://api.example.com:0/v1", "has no valid port"),
            ("http://127.0.0.1:+19202/v1", "has no valid port"),
            ("http://[::1]:70000/v1", "has no valid port"),
            ("http://256.256.256.256/v1", "not a valid IPv4 address"),
            ("http://10.0.0/v1", "not a valid IPv4 address"),
            ("http://api.example.123:8080/v1", "not a valid IPv4 address"),
            ("https://[1::2::3]/v1", "not a valid IPv6 address"),
            ("http://[1.2.3.4]:80/v1", "not a valid IPv6 address"),
        ] {
            let text = format!("[providers.moonshot]\nbase_url = \"{url}\"\n");
            let problems = resolve(&text, &keyed).err().unwrap().0;
            let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(
                found[0].starts_with("providers.moonshot.base_url: "),
                "{found:?}"
            );
            assert!(found[0].contains(expected), "{url}: {found:?}");
            assert!(!found[0].contains("hunter2") && !found[0].contains("secret"));
        }
    }

    /// `base_url_env` naming the key's variable by mistake reports the
    /// problem without the key.
    #[test]
    fn a_key_read_as_a_base_url_is_not_shown() {
        let env = |var: &str| match var {
            "MOONSHOT_API_KEY" => Some("sk-hunter2-key".to_string()),
            _ => None,
        };
        let text = "[providers.moonshot]\nbase_url_env = \"MOONSHOT_API_KEY\"\n";
        let problems = resolve(text, &env).err().unwrap().0;
        let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            found,
            [
                "providers.moonshot.base_url_env (MOONSHOT_API_KEY): a value of 14 characters (not shown) is not an http(s) URL"
            ]
        );
    }

    /// A file that `--check` passes where `MOONSHOT_BASE_URL` is set must
    /// pass where it is not: the file's URL is checked either way.
    #[test]
    fn a_base_url_overridden_by_its_variable_is_still_checked() {
        let overridden = |var: &str| match var {
            "MOONSHOT_BASE_URL" => Some("http://127.0.0.1:9000/v1".to_string()),
            _ => keyed(var),
        };
        let text = "[providers.moonshot]\nbase_url = \"https://user:hunter2@api.example.com/v1\"\n";
        let problems = resolve(text, &overridden).err().unwrap().0;
        let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("providers.moonshot.base_url: \"https://***@api.example.com/v1\""),
            "{found:?}"
        );
        let text = "[providers.moonshot]\nbase_url = \"https://api.example.com/v1\"\n";
        let config = resolve(text, &overridden).unwrap();
        assert_eq!(config.providers[0].base_url, "http://127.0.0.1:9000/v1");
    }

    #[test]
    fn key_variables_and_extra_models_are_checked_under_their_own_paths() {
        for (text, expected) in [
            (
                "[providers.aimlapi]\napi_key_env = \"\"\n",
                "providers.aimlapi.api_key_env: is empty",
            ),
            (
                "[providers.moonshot]\napi_key_envs = []\n",
                "providers.moonshot.api_key_envs: lists no variable",
            ),
            (
                "[providers.moonshot]\napi_key_envs = [\"MOONSHOT_API_KEY\", \" \"]\n",
                "providers.moonshot.api_key_envs[1]: is empty",
            ),
            (
                "[providers.aimlapi]\napi_key_env = \"AIMLAPI_API_KEY\"\napi_key_envs = [\"OTHER_API_KEY\"]\n",
                "providers.aimlapi.api_key_env: set api_key_env or api_key_envs, not both",
            ),
            (
                "[providers.moonshot]\nextra_models = [\"kimi-x\", \"\"]\n",
                "providers.moonshot.extra_models[1]: is empty",
            ),
            (
                "[providers.moonshot]\napi_key_envs = [\"A_API_KEY\", \"B_API_KEY\", \"A_API_KEY\"]\n",
                "providers.moonshot.api_key_envs[2]: names A_API_KEY again",
            ),
        ] {
            let problems = resolve(text, &keyed).err().unwrap().0;
            let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert!(found[0].starts_with(expected), "{text}: {found:?}");
        }
    }

    /// Each problem of one base URL is named, not only the first.
    #[test]
    fn every_problem_of_a_base_url_is_named() {
        for (url, expected) in [
            (
                "http://host:0/v1/chat/completions",
                &["ends in `/chat/completions`", "has no valid port"][..],
            ),
            (
                "http://host/v1?x=1#f",
                &["has a fragment", "has a query"][..],
            ),
            (
                "https://256.1.1.1:70000/v1/chat/completions?k=hunter2",
                &[
                    "has a query",
                    "ends in `/chat/completions`",
                    "not a valid IPv4 address",
                    "has no valid port",
                ][..],
            ),
            // A password is said alone, whatever it holds, and never shown.
            (
                "https://u:hun#ter2@256.1.1.1:70000/v1?k=1",
                &["holds a user name or password"][..],
            ),
            (
                "https://u:hun?ter2@host/v1",
                &["holds a user name or password"][..],
            ),
        ] {
            let text = format!("[providers.moonshot]\nbase_url = \"{url}\"\n");
            let found: Vec<String> = resolve(&text, &keyed)
                .err()
                .unwrap()
                .0
                .iter()
                .map(|p| p.to_string())
                .collect();
            assert_eq!(found.len(), expected.len(), "{url}: {found:?}");
            for (found, expected) in found.iter().zip(expected) {
                assert!(
                    found.starts_with("providers.moonshot.base_url: "),
                    "{found}"
                );
                assert!(found.contains(expected), "{url}: {found}");
                assert!(
                    !found.contains("hunter2") && !found.contains("hun"),
                    "{found}"
                );
            }
        }
    }

    /// A list with an entry that is no name still has its repeats named:
    /// one `--check` lists every problem of it.
    #[test]
    fn a_repeated_key_variable_is_named_beside_an_invalid_entry() {
        let text = "[providers.moonshot]\napi_key_envs = [\"\", \"A_KEY\", \"A_KEY\", \"1bad\", \"B_KEY\", \"B_KEY\"]\n";
        let found: Vec<String> = resolve(text, &keyed)
            .err()
            .unwrap()
            .0
            .iter()
            .map(|p| p.path.clone())
            .collect();
        assert_eq!(
            found,
            [0, 2, 3, 5].map(|i| format!("providers.moonshot.api_key_envs[{i}]"))
        );
    }

    #[test]
    fn a_base_url_with_a_port_or_an_empty_one_is_taken() {
        for url in [
            "http://127.0.0.1:65535/v1",
            "http://[::1]:8080/v1",
            "http://api.example.com:/v1",
            "https://api.example.com/v1",
        ] {
            let text = format!("[providers.moonshot]\nbase_url = \"{url}\"\n");
            assert!(resolve(&text, &keyed).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_catalogue_refresh_is_checked_and_off_by_default() {
        let config = resolve("", &keyed).unwrap();
        assert!(config.providers.iter().all(|p| p.models_refresh.is_none()));
        let text = "[providers.moonshot]\nrefresh_models_secs = 600\nrefresh_models_match = [\"K2\", \"\"]\n[providers.aimlapi]\nrefresh_models_secs = 60\n";
        let config = resolve(text, &keyed).unwrap();
        assert_eq!(
            config.providers[0].models_refresh,
            Some(ModelsRefresh {
                every: Duration::from_secs(600),
                matches: vec!["k2".into(), String::new()],
            })
        );
        let aimlapi = config.providers[1].models_refresh.as_ref().unwrap();
        assert!(aimlapi.takes("moonshot/Kimi-K3") && !aimlapi.takes("gpt-4o"));
        let text = "[providers.moonshot]\nrefresh_models_secs = 0.5\nrefresh_models_match = []\n";
        let problems = resolve(text, &keyed).err().unwrap().0;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "providers.moonshot.refresh_models_secs",
                "providers.moonshot.refresh_models_match"
            ]
        );
        // Too long an interval is told by its bound, not as too short.
        let text = "[providers.moonshot]\nrefresh_models_secs = 1e10\n";
        let problems = resolve(text, &keyed).err().unwrap().0;
        assert_eq!(
            problems[0].to_string(),
            "providers.moonshot.refresh_models_secs: must be 0 (off), or at least 1 second \
             and less than 1,000,000,000"
        );
    }

    /// `ids` kept as what `provider` of `config` listed at its base URL.
    fn found(config: &super::super::Config, provider: &str, ids: Vec<String>) -> bool {
        let listing = config.providers.iter().find(|p| &*p.name == provider);
        let base_url = &listing.unwrap().base_url;
        config.discovered.replace(provider, base_url, ids, |_| true)
    }

    #[test]
    fn found_ids_join_the_catalogue_only_while_the_refresh_is_on() {
        let text = "[providers.moonshot]\nrefresh_models_secs = 60\n";
        let first = resolve(text, &keyed).unwrap();
        let listed = vec!["kimi-k3".to_string(), "gpt-4o".into(), "kimi-k2.6".into()];
        assert!(found(&first, "moonshot", listed.clone()));
        assert!(!found(&first, "moonshot", listed));
        let second = resolve_reusing(text, &keyed, Some(&first)).unwrap();
        let models = &second.providers[0].models;
        assert_eq!(models.iter().filter(|m| *m == "kimi-k3").count(), 1);
        assert_eq!(models.iter().filter(|m| *m == "kimi-k2.6").count(), 1);
        assert!(!models.contains(&"gpt-4o".to_string()));
        assert_ne!(second.fingerprint, first.fingerprint);
        let off = resolve_reusing("", &keyed, Some(&second)).unwrap();
        assert!(!off.providers[0].models.contains(&"kimi-k3".to_string()));
    }

    /// The first ids `refresh_models_match` picks join, up to the limit,
    /// wherever they are in a provider's longer list.
    #[test]
    fn found_ids_are_picked_before_the_limit() {
        let text = "[providers.aimlapi]\nrefresh_models_secs = 60\n";
        let first = resolve(text, &keyed).unwrap();
        let mut listed: Vec<String> = (0..super::super::MAX_FOUND_MODELS + 500)
            .map(|i| format!("gpt-{i}"))
            .collect();
        listed.extend((0..super::super::MAX_FOUND_MODELS + 1).map(|i| format!("kimi-x{i}")));
        found(&first, "aimlapi", listed);
        let second = resolve_reusing(text, &keyed, Some(&first)).unwrap();
        let aimlapi = second
            .providers
            .iter()
            .find(|p| &*p.name == "aimlapi")
            .unwrap();
        let found = &aimlapi.models[aimlapi.configured_models..];
        assert_eq!(found.len(), super::super::MAX_FOUND_MODELS);
        assert_eq!(found[0], "kimi-x0");
        assert!(found.iter().all(|id| id.starts_with("kimi-x")));
    }

    /// A `<provider>/<model>` name that routes to that provider is not
    /// taken over by an id another provider's refresh listed: the name
    /// pins the provider. The listed id stays reachable by its own
    /// provider's prefix; one that names no route still joins as it is.
    #[test]
    fn a_found_id_never_takes_another_providers_pinned_name() {
        let text = "[providers.aimlapi]\nrefresh_models_secs = 60\n";
        let first = resolve(text, &keyed).unwrap();
        let listed = vec!["moonshot/kimi-k2.6".to_string(), "moonshot/kimi-k9".into()];
        found(&first, "aimlapi", listed);
        let second = resolve_reusing(text, &keyed, Some(&first)).unwrap();
        let served_by = |name: &str| {
            let route = second.routes.lookup(name).unwrap();
            let providers: Vec<&str> = route.targets.iter().map(|t| &*t.provider.name).collect();
            providers
        };
        assert_eq!(served_by("moonshot/kimi-k2.6"), ["moonshot"]);
        assert_eq!(served_by("aimlapi/moonshot/kimi-k2.6"), ["aimlapi"]);
        assert_eq!(served_by("moonshot/kimi-k9"), ["aimlapi"]);
        // A configured id still wins, as AI/ML API's own ids do.
        assert_eq!(served_by("moonshot/kimi-k2-preview"), ["aimlapi"]);
    }

    /// An id a refresh found on one provider that another provider is
    /// configured with goes to the configured one first, whatever their
    /// order; the finder is still a fall-back. An id only found is served.
    #[test]
    fn a_found_id_comes_after_the_providers_configured_with_it() {
        let text = "[providers.moonshot]\nrefresh_models_secs = 60\n";
        let first = resolve(text, &keyed).unwrap();
        found(
            &first,
            "moonshot",
            vec!["kimi-chat".to_string(), "kimi-k9-new".into()],
        );
        let second = resolve_reusing(text, &keyed, Some(&first)).unwrap();
        let served_by = |name: &str| {
            let route = second.routes.lookup(name).unwrap();
            let providers: Vec<&str> = route.targets.iter().map(|t| &*t.provider.name).collect();
            providers
        };
        assert_eq!(served_by("kimi-chat"), ["agentsflare", "moonshot"]);
        assert_eq!(served_by("kimi-k9-new"), ["moonshot"]);
        // Configured on both: the preset order, as before.
        assert_eq!(served_by("kimi-k2.6"), ["moonshot", "agentsflare"]);
    }
}
