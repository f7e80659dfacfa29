//! TOML text to the file structs, collecting every problem (syntax, types,
//! unknown keys) with its key path instead of stopping at the first one.

use super::ConfigProblem;
use super::file::{
    AliasFile, BreakerFile, KeyFile, LimitsFile, ProviderFile, RetryFile, ServerFile,
};
use serde::de::DeserializeOwned;

/// A config file after parsing: sections keep the file's order.
#[derive(Debug, Default)]
pub struct ParsedFile {
    pub server: ServerFile,
    pub retry: RetryFile,
    pub breaker: BreakerFile,
    pub providers: Vec<(String, ProviderFile)>,
    pub aliases: Vec<(String, AliasFile)>,
    pub keys: Vec<(String, KeyFile)>,
    pub limits: LimitsFile,
}

pub fn parse(text: &str, problems: &mut Vec<ConfigProblem>) -> ParsedFile {
    let mut parsed = ParsedFile::default();
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(err) => {
            problems.push(syntax_problem(text, &err));
            return parsed;
        }
    };
    for (key, value) in table {
        match key.as_str() {
            "server" => {
                if let Some(server) = section::<ServerFile>(value, "server", problems) {
                    parsed.server = server;
                }
            }
            "retry" => {
                if let Some(retry) = section::<RetryFile>(value, "retry", problems) {
                    parsed.retry = retry;
                }
            }
            "breaker" => {
                if let Some(breaker) = section::<BreakerFile>(value, "breaker", problems) {
                    parsed.breaker = breaker;
                }
            }
            "providers" => {
                for (name, entry) in subtables(value, "providers", problems) {
                    let path = format!("providers.{name}");
                    if let Some(provider) = section::<ProviderFile>(entry, &path, problems) {
                        parsed.providers.push((name, provider));
                    }
                }
            }
            "aliases" => {
                for (name, entry) in subtables(value, "aliases", problems) {
                    let path = format!("aliases.{name}");
                    if let Some(alias) = section::<AliasFile>(entry, &path, problems) {
                        parsed.aliases.push((name, alias));
                    }
                }
            }
            "keys" => {
                for (name, entry) in subtables(value, "keys", problems) {
                    let path = format!("keys.{name}");
                    if let Some(key) = section::<KeyFile>(entry, &path, problems) {
                        parsed.keys.push((name, key));
                    }
                }
            }
            "limits" => {
                if let Some(limits) = section::<LimitsFile>(value, "limits", problems) {
                    parsed.limits = limits;
                }
            }
            other => problems.push(ConfigProblem::new(other, "unknown key")),
        }
    }
    parsed
}

/// The entries of a table of tables, in file order.
fn subtables(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Vec<(String, toml::Value)> {
    match value {
        toml::Value::Table(table) => table.into_iter().collect(),
        other => {
            problems.push(ConfigProblem::new(
                path,
                format!("expected a table, found {}", other.type_str()),
            ));
            Vec::new()
        }
    }
}

/// Deserialises one section, recording a type error with its full path and
/// every key the structs do not know. serde stops at a section's first
/// wrong-typed value, so when there is one every other value of the section
/// is tried alone too, down through nested tables (`timeouts`, a limit
/// table), and each of its type errors is recorded as well.
fn section<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<T> {
    let leaves = match &value {
        toml::Value::Table(table) => leaves_of(table),
        _ => Vec::new(),
    };
    let mut unknown = Vec::new();
    let result = deserialize::<T>(value, |ignored| unknown.push(ignored));
    for key in unknown {
        problems.push(ConfigProblem::new(join(path, &key), "unknown key"));
    }
    let (inner, message) = match result {
        Ok(section) => return Some(section),
        Err(failure) => failure,
    };
    problems.push(ConfigProblem::new(join(path, &inner), message));
    for alone in leaves {
        let mut unknown = Vec::new();
        let result = deserialize::<T>(alone, |ignored| unknown.push(ignored));
        let mut found: Vec<ConfigProblem> = unknown
            .into_iter()
            .map(|key| ConfigProblem::new(join(path, &key), "unknown key"))
            .collect();
        match result {
            // A required member the lone value does not bring is not a
            // problem of the file.
            Err((inner, message)) if !message.starts_with("missing field") => {
                found.push(ConfigProblem::new(join(path, &inner), message))
            }
            _ => {}
        }
        for problem in found {
            // The whole section's pass may have met it first.
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    None
}

/// Every value of `table` that is not itself a table, each alone in a copy
/// of the tables that lead to it. Arrays are values: an array's elements
/// are not tried one by one.
fn leaves_of(table: &toml::Table) -> Vec<toml::Value> {
    let mut leaves = Vec::new();
    for (key, entry) in table {
        let wrap =
            |inner: toml::Value| toml::Value::Table(toml::Table::from_iter([(key.clone(), inner)]));
        match entry {
            toml::Value::Table(nested) if !nested.is_empty() => {
                leaves.extend(leaves_of(nested).into_iter().map(wrap));
            }
            other => leaves.push(wrap(other.clone())),
        }
    }
    leaves
}

/// `value` as `T`, every key `T` does not know given to `unknown`; an
/// error as the path inside `value` and serde's message.
fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    mut unknown: impl FnMut(String),
) -> Result<T, (String, String)> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    serde_ignored::deserialize(de, |ignored| unknown(key_path(&ignored))).map_err(|err| {
        let inner = track.path().to_string();
        let inner = if inner == "." { String::new() } else { inner };
        // toml adds a line "in `key`" that the path already says.
        let message = err.to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        (inner, message)
    })
}

/// An ignored key's path as the file writes it: `timeouts.nap`, not
/// serde_ignored's `timeouts.?.nap` (its `?` marks an `Option`'s value).
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => join(&key_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// A syntax error by line and column, without the line itself: toml's own
/// message quotes the offending line, which may hold a secret (a
/// `redis_url` password, a key left in a file by mistake), and problems are
/// printed by `--check` and logged by a reload.
fn syntax_problem(text: &str, err: &toml::de::Error) -> ConfigProblem {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return ConfigProblem::new("", format!("TOML syntax: {message}"));
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigProblem::new(
        "",
        format!("TOML syntax at line {line}, column {column}: {message}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_names_its_place_but_does_not_quote_the_line() {
        let mut problems = Vec::new();
        let text = "[limits]\nredis_url = \"redis://:hunter2@redis:6379\n";
        parse(text, &mut problems);
        assert_eq!(problems.len(), 1);
        let problem = problems[0].to_string();
        assert!(!problem.contains("hunter2"), "{problem}");
        assert!(
            problem.starts_with("TOML syntax at line 2, column "),
            "{problem}"
        );
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let mut problems = Vec::new();
        let text = r#"
            colour = "blue"
            [server]
            listen = 8080
            [providers.moonshot]
            base_urll = "x"
            [providers.other]
            models = "not-a-list"
            [aliases.kimi]
            targets = [{ provider = "moonshot" }]
        "#;
        parse(text, &mut problems);
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"colour"), "{problems:?}");
        assert!(paths.contains(&"server.listen"), "{problems:?}");
        assert!(
            paths.contains(&"providers.moonshot.base_urll"),
            "{problems:?}"
        );
        assert!(paths.contains(&"providers.other.models"), "{problems:?}");
        assert!(
            paths.iter().any(|p| p.starts_with("aliases.kimi.targets")),
            "{problems:?}"
        );
    }

    #[test]
    fn every_wrong_typed_value_of_a_section_is_reported() {
        let mut problems = Vec::new();
        let text = r#"
            [server]
            listen = 8080
            max_body_bytes = "lots"
            drain_secs = 5
            [providers.moonshot]
            models = "kimi"
            headers = { x-team = 1 }
            timeouts = { connect_secs = "soon" }
            [aliases.kimi]
            targets = "moonshot"
            strategy = 3
        "#;
        let parsed = parse(text, &mut problems);
        let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "aliases.kimi.strategy",
                "aliases.kimi.targets",
                "providers.moonshot.headers.x-team",
                "providers.moonshot.models",
                "providers.moonshot.timeouts.connect_secs",
                "server.listen",
                "server.max_body_bytes",
            ],
            "{problems:?}"
        );
        assert!(parsed.providers.is_empty());
    }

    #[test]
    fn every_wrong_typed_value_inside_nested_tables_is_reported() {
        let mut problems = Vec::new();
        let text = r#"
            [providers.moonshot]
            timeouts = { connect_secs = "soon", idle_secs = "later", total_secs = 30, nap = 1 }
            [limits]
            backend = 7
            [limits.global]
            requests_per_minute = "many"
            tokens_per_minute = -1
            [limits.providers.moonshot]
            concurrent_requests = "some"
            requests_per_day = 10
            [keys.team]
            secret_env = "TEAM_KEY"
            model_limits = { kimi = { requests_per_minute = "x", tokens_per_day = "y" } }
        "#;
        parse(text, &mut problems);
        let mut paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "keys.team.model_limits.kimi.requests_per_minute",
                "keys.team.model_limits.kimi.tokens_per_day",
                "limits.backend",
                "limits.global.requests_per_minute",
                "limits.global.tokens_per_minute",
                "limits.providers.moonshot.concurrent_requests",
                "providers.moonshot.timeouts.connect_secs",
                "providers.moonshot.timeouts.idle_secs",
                "providers.moonshot.timeouts.nap",
            ],
            "{problems:?}"
        );
        let nap = problems.iter().find(|p| p.path.ends_with(".nap")).unwrap();
        assert_eq!(
            nap.to_string(),
            "providers.moonshot.timeouts.nap: unknown key"
        );
    }

    #[test]
    fn syntax_error_is_one_problem() {
        let mut problems = Vec::new();
        parse("[server\nlisten=1", &mut problems);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn keeps_file_order() {
        let mut problems = Vec::new();
        let parsed = parse(
            "[providers.zeta]\n[providers.alpha]\n[providers.mid]\n",
            &mut problems,
        );
        let names: Vec<&str> = parsed.providers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
    }
}
