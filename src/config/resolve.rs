//! Presets + file + environment into a validated [`Config`]; every problem is
//! collected with its key path so `--check` can print them all at once.

use super::file::{ProviderFile, TimeoutsFile};
use super::parse::parse;
use super::presets::PRESETS;
use super::{
    ApiKey, Config, ConfigErrors, ConfigProblem, DEFAULT_LISTEN, DEFAULT_MAX_BODY_BYTES, Provider,
    Timeouts,
};
use crate::proxy::route::{AliasSpec, RouteTable};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// A provider while presets and the file are merged.
struct Draft {
    name: String,
    enabled: bool,
    base_url: Option<String>,
    base_url_env: Option<String>,
    api_key_env: Option<String>,
    models: Vec<String>,
    headers: Vec<(String, String)>,
    timeouts: TimeoutsFile,
}

/// Builds the configuration from a file's text (empty for none) and an
/// environment lookup (a closure, so tests need not touch the process env).
pub fn resolve(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let parsed = parse(text, &mut problems);

    let listen = parsed.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = listen.parse().unwrap_or_else(|_| {
        problems.push(ConfigProblem::new(
            "server.listen",
            format!("{listen:?} is not an address like 127.0.0.1:8080"),
        ));
        DEFAULT_LISTEN.parse().expect("default address parses")
    });
    let max_body_bytes = match parsed.server.max_body_bytes {
        None => DEFAULT_MAX_BODY_BYTES,
        Some(0) => {
            problems.push(ConfigProblem::new(
                "server.max_body_bytes",
                "must be at least 1",
            ));
            DEFAULT_MAX_BODY_BYTES
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
    };

    let mut drafts: Vec<Draft> = PRESETS
        .iter()
        .map(|p| Draft {
            name: p.name.to_string(),
            enabled: true,
            base_url: Some(p.base_url.to_string()),
            base_url_env: Some(p.base_url_env.to_string()),
            api_key_env: Some(p.api_key_env.to_string()),
            models: p.models.iter().map(|m| m.to_string()).collect(),
            headers: Vec::new(),
            timeouts: TimeoutsFile::default(),
        })
        .collect();
    for (name, file) in parsed.providers {
        merge(&mut drafts, name, file, &mut problems);
    }

    let mut fingerprint = Sha256::new();
    fingerprint.update(text.as_bytes());
    let mut providers = Vec::new();
    for draft in drafts.into_iter().filter(|d| d.enabled) {
        if let Some(provider) = build_provider(draft, env, &mut problems) {
            fingerprint.update(provider.name.as_bytes());
            fingerprint.update(provider.base_url.as_bytes());
            fingerprint.update([u8::from(provider.key.is_some())]);
            providers.push(Arc::new(provider));
        }
    }

    let mut aliases = Vec::new();
    for (name, alias) in parsed.aliases {
        let path = format!("aliases.{name}");
        if name.trim().is_empty() {
            problems.push(ConfigProblem::new(&path, "alias name is empty"));
        }
        if alias.targets.is_empty() {
            problems.push(ConfigProblem::new(
                format!("{path}.targets"),
                "needs at least one target",
            ));
        }
        let mut targets = Vec::new();
        for (i, target) in alias.targets.into_iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            match providers.iter().find(|p| *p.name == *target.provider) {
                None => problems.push(ConfigProblem::new(
                    format!("{tpath}.provider"),
                    format!("unknown provider {:?}", target.provider),
                )),
                Some(provider) if target.model.is_empty() => {
                    let _ = provider;
                    problems.push(ConfigProblem::new(format!("{tpath}.model"), "is empty"));
                }
                Some(provider) => targets.push((provider.clone(), target.model)),
            }
        }
        aliases.push(AliasSpec { name, targets });
    }

    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    let routes = RouteTable::build(&providers, &aliases);
    let digest = fingerprint.finalize();
    Ok(Config {
        listen,
        max_body_bytes,
        providers,
        routes,
        fingerprint: digest[..6].iter().map(|b| format!("{b:02x}")).collect(),
    })
}

fn merge(
    drafts: &mut Vec<Draft>,
    name: String,
    file: ProviderFile,
    problems: &mut Vec<ConfigProblem>,
) {
    let path = format!("providers.{name}");
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid_name {
        problems.push(ConfigProblem::new(
            &path,
            "provider names use lowercase letters, digits, '-' and '_'",
        ));
        return;
    }
    let index = match drafts.iter().position(|d| d.name == name) {
        Some(index) => index,
        None => {
            for (field, given) in [
                ("base_url", file.base_url.is_some()),
                ("api_key_env", file.api_key_env.is_some()),
            ] {
                if !given {
                    problems.push(ConfigProblem::new(
                        format!("{path}.{field}"),
                        "required for a provider that is not a preset",
                    ));
                }
            }
            drafts.push(Draft {
                name,
                enabled: true,
                base_url: None,
                base_url_env: None,
                api_key_env: None,
                models: Vec::new(),
                headers: Vec::new(),
                timeouts: TimeoutsFile::default(),
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
    if file.base_url_env.is_some() {
        draft.base_url_env = file.base_url_env;
    }
    if file.api_key_env.is_some() {
        draft.api_key_env = file.api_key_env;
    }
    if let Some(models) = file.models {
        draft.models = models;
    }
    draft.models.extend(file.extra_models.unwrap_or_default());
    draft.headers = file.headers.unwrap_or_default().into_iter().collect();
    if let Some(t) = file.timeouts {
        draft.timeouts = t;
    }
}

fn build_provider(
    draft: Draft,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<ConfigProblem>,
) -> Option<Provider> {
    let path = format!("providers.{}", draft.name);
    let before = problems.len();
    let from_env = draft
        .base_url_env
        .as_deref()
        .and_then(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)));
    let (base_url, source) = match (from_env, draft.base_url) {
        (Some((var, url)), _) => (url, var.to_string()),
        (None, Some(url)) => (url, format!("{path}.base_url")),
        (None, None) => return None, // already reported as required
    };
    let base_url = base_url.trim().trim_end_matches('/').to_string();
    let chat_url = match reqwest::Url::parse(&format!("{base_url}/chat/completions")) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Some(url),
        _ => {
            problems.push(ConfigProblem::new(
                source,
                format!("{base_url:?} is not an http(s) URL"),
            ));
            None
        }
    };
    let api_key_env = draft.api_key_env.unwrap_or_default();
    let key = env(&api_key_env)
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .and_then(
            |secret| match HeaderValue::try_from(format!("Bearer {secret}")) {
                Ok(mut header) => {
                    header.set_sensitive(true);
                    Some(ApiKey { secret, header })
                }
                Err(_) => {
                    problems.push(ConfigProblem::new(
                        api_key_env.as_str(),
                        "the key contains characters not allowed in an HTTP header",
                    ));
                    None
                }
            },
        );

    let mut headers = HeaderMap::new();
    for (name, value) in draft.headers {
        let hpath = format!("{path}.headers.{name}");
        let parsed_name = HeaderName::try_from(name.as_str());
        match (parsed_name, HeaderValue::try_from(value.as_str())) {
            (Ok(n), _) if is_reserved_header(&n) => problems.push(ConfigProblem::new(
                hpath,
                "is set by the gateway and cannot be configured",
            )),
            (Ok(n), Ok(v)) => {
                headers.insert(n, v);
            }
            _ => problems.push(ConfigProblem::new(hpath, "not a valid HTTP header")),
        }
    }
    let timeouts = timeouts(&draft.timeouts, &path, problems);
    let mut models: Vec<String> = Vec::new();
    for (i, model) in draft.models.into_iter().enumerate() {
        if model.trim().is_empty() {
            problems.push(ConfigProblem::new(
                format!("{path}.models[{i}]"),
                "is empty",
            ));
        } else if !models.contains(&model) {
            models.push(model);
        }
    }
    let client = reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("kimi-gateway/", env!("CARGO_PKG_VERSION")))
        .build();
    let client = match client {
        Ok(client) => client,
        Err(err) => {
            problems.push(ConfigProblem::new(&path, format!("HTTP client: {err}")));
            return None;
        }
    };
    if problems.len() > before {
        return None;
    }
    Some(Provider {
        name: draft.name.into(),
        base_url,
        chat_url: chat_url?,
        api_key_env,
        key,
        models,
        headers,
        timeouts,
        client,
    })
}

/// Headers a config may not set, because the gateway owns them.
fn is_reserved_header(name: &HeaderName) -> bool {
    use http::header::*;
    [
        AUTHORIZATION,
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
    ]
    .contains(name)
}

fn timeouts(file: &TimeoutsFile, path: &str, problems: &mut Vec<ConfigProblem>) -> Timeouts {
    let defaults = Timeouts::default();
    let mut pick = |field: &str, value: Option<f64>, default: Duration| match value {
        None => default,
        Some(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => Duration::from_secs_f64(secs),
        Some(_) => {
            problems.push(ConfigProblem::new(
                format!("{path}.timeouts.{field}"),
                "must be a positive number of seconds",
            ));
            default
        }
    };
    Timeouts {
        connect: pick("connect_secs", file.connect_secs, defaults.connect),
        first_byte: pick("first_byte_secs", file.first_byte_secs, defaults.first_byte),
        idle: pick("idle_secs", file.idle_secs, defaults.idle),
        total: pick("total_secs", file.total_secs, defaults.total),
    }
}
