//! `[keys.NAME]`: client keys, validated. A key's secret comes from the
//! environment (`secret_env`) or as its SHA-256 (`secret_sha256`), never as
//! plain text in the file; its models must be routable names; its limits
//! become scopes that keep their state across reloads.

use super::ConfigProblem;
use super::MAX_NAME_BYTES;
use super::env_name::check_env_name;
use super::file::KeyFile;
use super::limits::limit_spec;
use crate::auth::{ClientKey, KeyTable, digest};
use crate::limits::{ScopeKind, ScopeRegistry};
use crate::proxy::route::RouteTable;

/// Why a key may not name `model`: no route has it, or only a catalogue
/// refresh found it (the next start, before any refresh, would refuse it).
fn unknown_model(routes: &RouteTable, model: &str) -> String {
    match routes.lookup(model) {
        Some(_) => format!(
            "unknown model {model:?}: only the provider's catalogue refresh lists it; \
             name it in the provider's `models` or `extra_models`"
        ),
        None => format!("unknown model {model:?}"),
    }
}

pub fn client_keys(
    files: Vec<(String, KeyFile)>,
    env: &dyn Fn(&str) -> Option<String>,
    routes: &RouteTable,
    registry: &mut ScopeRegistry,
    unreadable: &[String],
    problems: &mut Vec<ConfigProblem>,
) -> KeyTable {
    let mut table = KeyTable::default();
    for (name, file) in files {
        let path = format!("keys.{name}");
        let valid_name = (1..=MAX_NAME_BYTES).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            problems.push(ConfigProblem::new(
                &path,
                format!(
                    "key names use letters, digits, '-', '_' and '.', at most {MAX_NAME_BYTES} \
                     of them (they appear in logs)"
                ),
            ));
            continue;
        }
        // A key without a usable secret is still checked through, so one
        // `--check` names every problem of its table.
        // A secret given, but not as a string, was reported as that: it
        // is not missing as well.
        let secret_unreadable = ["secret_env", "secret_sha256"]
            .iter()
            .any(|field| unreadable.contains(&format!("{path}.{field}")));
        let digest = secret_digest(&file, &path, env, secret_unreadable, problems);
        let mut key = ClientKey::new(name.as_str().into(), digest.unwrap_or_default());
        if let Some(models) = &file.models {
            if models.is_empty() {
                problems.push(ConfigProblem::new(
                    format!("{path}.models"),
                    "is empty: leave it out to allow every model",
                ));
            }
            let mut allowed = crate::auth::ModelSet::default();
            for (i, model) in models.iter().enumerate() {
                if !routes.routes_without_refresh(model) {
                    problems.push(ConfigProblem::new(
                        format!("{path}.models[{i}]"),
                        unknown_model(routes, model),
                    ));
                }
                allowed.insert(model.as_str().into());
            }
            key.models = Some(allowed);
        }
        if let Some(limits) = &file.limits {
            let spec = limit_spec(limits, &format!("{path}.limits"), problems);
            key.limits = registry.scope(ScopeKind::Key, &name, "", spec);
        }
        for (model, limits) in file.model_limits.iter().flatten() {
            let mpath = format!("{path}.model_limits.{model:?}");
            if !routes.routes_without_refresh(model) {
                problems.push(ConfigProblem::new(&mpath, unknown_model(routes, model)));
            } else if !key.may_use(model) {
                problems.push(ConfigProblem::new(
                    &mpath,
                    "the key may not use this model (see its models list)",
                ));
            }
            let spec = limit_spec(limits, &mpath, problems);
            if let Some(scope) = registry.scope(ScopeKind::KeyModel, &name, model, spec) {
                key.model_limits.insert(model.as_str().into(), scope);
            }
        }
        if digest.is_some() && !table.insert(key) {
            problems.push(ConfigProblem::new(
                &path,
                "has the same secret as another key",
            ));
        }
    }
    table
}

/// The digest of the key's secret, from exactly one of its two sources.
fn secret_digest(
    file: &KeyFile,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secret_unreadable: bool,
    problems: &mut Vec<ConfigProblem>,
) -> Option<[u8; 32]> {
    if file.secret.is_some() {
        problems.push(ConfigProblem::new(
            format!("{path}.secret"),
            "plain-text secrets are not allowed in the file: use secret_env (an environment \
             variable holding the key) or secret_sha256 (the key's SHA-256 in hex)",
        ));
        return None;
    }
    match (&file.secret_env, &file.secret_sha256) {
        (Some(var), None) if !check_env_name(&format!("{path}.secret_env"), var, problems) => None,
        (Some(var), None) => match env(var).map(|v| v.trim().to_string()) {
            // A key no request could carry (a line break, a control
            // character) would be a key that never matches.
            Some(secret) if http::HeaderValue::from_str(&secret).is_err() => {
                problems.push(ConfigProblem::new(
                    format!("{path}.secret_env"),
                    format!(
                        "environment variable {var} holds characters not allowed in an HTTP \
                         header: no request could present this key"
                    ),
                ));
                None
            }
            Some(secret) if !secret.is_empty() => Some(digest(secret.as_bytes())),
            found => {
                let state = if found.is_some() { "blank" } else { "not set" };
                problems.push(ConfigProblem::new(
                    format!("{path}.secret_env"),
                    format!("environment variable {var} is {state}"),
                ));
                None
            }
        },
        (None, Some(hex)) => {
            let parsed = parse_hex(hex.trim());
            if parsed.is_none() {
                problems.push(ConfigProblem::new(
                    format!("{path}.secret_sha256"),
                    "must be 64 hex digits (e.g. the output of: printf %s \"$KEY\" | sha256sum)",
                ));
            }
            parsed
        }
        (Some(_), Some(_)) => {
            problems.push(ConfigProblem::new(
                path,
                "set either secret_env or secret_sha256, not both",
            ));
            None
        }
        (None, None) if secret_unreadable => None,
        (None, None) => {
            problems.push(ConfigProblem::new(
                path,
                "needs secret_env or secret_sha256",
            ));
            None
        }
    }
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digests_parse_and_match_the_key() {
        let hex: String = digest(b"sk-test")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(parse_hex(&hex), Some(digest(b"sk-test")));
        assert_eq!(parse_hex(&hex.to_uppercase()), Some(digest(b"sk-test")));
        assert_eq!(parse_hex("abc"), None);
        assert_eq!(parse_hex(&"zz".repeat(32)), None);
    }

    /// A secret given with the wrong type is one problem, not that and
    /// "needs secret_env or secret_sha256" too; a key with neither still
    /// gets that.
    #[test]
    fn a_secret_of_the_wrong_type_is_not_reported_missing_too() {
        let keyed = |var: &str| var.ends_with("_API_KEY").then(|| "k".to_string());
        for text in [
            "[keys.alpha]\nsecret_sha256 = 5\n",
            "[keys.alpha]\nsecret_env = [\"A\"]\n",
        ] {
            let problems = crate::config::resolve(text, &keyed).err().unwrap().0;
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert!(
                problems[0].path.starts_with("keys.alpha.secret"),
                "{problems:?}"
            );
        }
        let problems = crate::config::resolve("[keys.alpha]\nmodels = [\"kimi-k2.6\"]\n", &keyed)
            .err()
            .unwrap()
            .0;
        assert_eq!(
            problems[0].to_string(),
            "keys.alpha: needs secret_env or secret_sha256"
        );
    }

    /// A key with a line break inside (a file's two lines pasted into one
    /// variable) could never be presented: refused, not kept unmatched.
    #[test]
    fn a_key_no_header_could_carry_is_refused() {
        let env = |var: &str| match var {
            "TEAM_KEY" => Some("first\nsecond".to_string()),
            _ => var.ends_with("_API_KEY").then(|| "k".to_string()),
        };
        let problems = crate::config::resolve("[keys.team]\nsecret_env = \"TEAM_KEY\"\n", &env)
            .err()
            .unwrap()
            .0;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "keys.team.secret_env");
        assert!(
            problems[0]
                .message
                .contains("no request could present this key"),
            "{problems:?}"
        );
        assert!(!problems[0].message.contains("second"), "{problems:?}");
    }
}
