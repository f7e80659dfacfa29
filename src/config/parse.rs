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
    /// Full key paths of values that could not be read (a wrong type):
    /// each is reported here, and left out of its section.
    pub unreadable: Vec<String>,
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
                if let Some(server) =
                    section::<ServerFile>(value, "server", problems, &mut parsed.unreadable)
                {
                    parsed.server = server;
                }
            }
            "retry" => {
                if let Some(retry) =
                    section::<RetryFile>(value, "retry", problems, &mut parsed.unreadable)
                {
                    parsed.retry = retry;
                }
            }
            "breaker" => {
                if let Some(breaker) =
                    section::<BreakerFile>(value, "breaker", problems, &mut parsed.unreadable)
                {
                    parsed.breaker = breaker;
                }
            }
            "providers" => {
                for (name, entry) in subtables(value, "providers", problems) {
                    let path = format!("providers.{name}");
                    if let Some(provider) =
                        section::<ProviderFile>(entry, &path, problems, &mut parsed.unreadable)
                    {
                        parsed.providers.push((name, provider));
                    }
                }
            }
            "aliases" => {
                for (name, entry) in subtables(value, "aliases", problems) {
                    let path = format!("aliases.{name}");
                    if let Some(alias) =
                        section::<AliasFile>(entry, &path, problems, &mut parsed.unreadable)
                    {
                        parsed.aliases.push((name, alias));
                    }
                }
            }
            "keys" => {
                for (name, entry) in subtables(value, "keys", problems) {
                    let path = format!("keys.{name}");
                    if let Some(key) =
                        section::<KeyFile>(entry, &path, problems, &mut parsed.unreadable)
                    {
                        parsed.keys.push((name, key));
                    }
                }
            }
            "limits" => {
                if let Some(limits) =
                    section::<LimitsFile>(value, "limits", problems, &mut parsed.unreadable)
                {
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
/// table), and each of its type errors is recorded as well. The section is
/// then read without its unreadable values (their paths go to
/// `unreadable`), so that the rest still get their own checks.
fn section<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    problems: &mut Vec<ConfigProblem>,
    unreadable: &mut Vec<String>,
) -> Option<T> {
    let leaves = match &value {
        toml::Value::Table(table) => leaves_of(table),
        _ => Vec::new(),
    };
    let whole = value.clone();
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
    let mut wrong = vec![inner];
    for alone in leaves {
        let mut unknown = Vec::new();
        let result = deserialize::<T>(alone.value.clone(), |ignored| unknown.push(ignored));
        let mut found: Vec<ConfigProblem> = unknown
            .into_iter()
            .map(|key| ConfigProblem::new(join(path, &alone.renumbered(&key)), "unknown key"))
            .collect();
        if let Err((inner, message)) = result {
            let inner = alone.renumbered(&inner);
            // A required member the lone value does not bring is not a
            // problem of the file, unless the element it lies in lacks it.
            if !message.starts_with("missing field") || alone.lacks_a_member_of_the_file(&inner) {
                found.push(ConfigProblem::new(join(path, &inner), message));
                wrong.push(inner);
            }
        }
        for problem in found {
            // The whole section's pass may have met it first.
            if !problems.contains(&problem) {
                problems.push(problem);
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    let mut rest = whole;
    for inner in &wrong {
        remove_value(&mut rest, inner);
    }
    unreadable.extend(wrong.iter().map(|inner| join(path, inner)));
    // Its unknown keys are already reported.
    deserialize::<T>(rest, |_| {}).ok()
}

/// Takes the value at `inner` (`a.b`, `a[0].b`) out of `value`: the table
/// entry it names, or the whole array a path into an array goes through.
fn remove_value(value: &mut toml::Value, inner: &str) {
    let Some(mut table) = value.as_table_mut() else {
        return;
    };
    let mut rest = inner;
    loop {
        // The longest key the path starts with: a key may hold dots (a
        // model name such as `kimi-k2.6`).
        let starts_with_key = |key: &&String| {
            rest.strip_prefix(key.as_str())
                .is_some_and(|after| after.is_empty() || after.starts_with(['.', '[']))
        };
        let Some(key) = table
            .keys()
            .filter(starts_with_key)
            .max_by_key(|k| k.len())
            .cloned()
        else {
            return;
        };
        let after = &rest[key.len()..];
        if after.is_empty() || after.starts_with('[') {
            table.remove(&key);
            return;
        }
        rest = &after[1..];
        table = match table.get_mut(&key) {
            Some(toml::Value::Table(nested)) => nested,
            _ => return,
        };
    }
}

/// One value of a section, alone in a copy of the tables that lead to it.
/// An array's element is alone in a one-element array: its errors say
/// `[0]`, which [`Leaf::renumbered`] turns back into its place in the file.
struct Leaf {
    value: toml::Value,
    /// The path (inside the section) of the array this leaf is an element
    /// of, or lies in, and its index there.
    element: Option<(String, usize)>,
    /// The leaf is a whole array element, not one value of a table
    /// element: a member missing from it is missing from the file.
    whole_element: bool,
}

impl Leaf {
    /// `inner` (a path in the leaf) as a path in the section.
    fn renumbered(&self, inner: &str) -> String {
        if let Some((array, index)) = &self.element
            && let Some(rest) = inner.strip_prefix(&format!("{array}[0]"))
        {
            return format!("{array}[{index}]{rest}");
        }
        inner.to_string()
    }

    /// Whether a member missing at `inner` (renumbered) is missing from
    /// the file: it lies in this leaf's array element, which is whole.
    fn lacks_a_member_of_the_file(&self, inner: &str) -> bool {
        self.whole_element
            && self
                .element
                .as_ref()
                .is_some_and(|(array, index)| inner.starts_with(&format!("{array}[{index}]")))
    }
}

/// Every value of `table` that is not itself a table, each alone in a copy
/// of the tables that lead to it. An array's elements are tried one by one
/// (a table element's values one by one too), so each bad one is reported.
fn leaves_of(table: &toml::Table) -> Vec<Leaf> {
    let mut leaves = Vec::new();
    for (key, entry) in table {
        let wrap = |leaf: Leaf| Leaf {
            value: toml::Value::Table(toml::Table::from_iter([(key.clone(), leaf.value)])),
            element: leaf.element.map(|(array, i)| (join(key, &array), i)),
            whole_element: leaf.whole_element,
        };
        match entry {
            toml::Value::Table(nested) if !nested.is_empty() => {
                leaves.extend(leaves_of(nested).into_iter().map(wrap));
            }
            toml::Value::Array(items) if !items.is_empty() => {
                for (index, item) in items.iter().enumerate() {
                    let alone = |value: toml::Value, whole_element: bool| {
                        wrap(Leaf {
                            value: toml::Value::Array(vec![value]),
                            element: Some((String::new(), index)),
                            whole_element,
                        })
                    };
                    // The element whole (a missing member, its first bad
                    // value), then a table element's values one by one
                    // (every bad one; arrays nested in an element, none in
                    // the file's structs, only as the element whole does).
                    leaves.push(alone(item.clone(), true));
                    if let toml::Value::Table(fields) = item {
                        let inner = leaves_of(fields);
                        leaves.extend(
                            inner
                                .into_iter()
                                .filter(|leaf| leaf.element.is_none())
                                .map(|leaf| alone(leaf.value, false)),
                        );
                    }
                }
            }
            other => leaves.push(wrap(Leaf {
                value: other.clone(),
                element: None,
                whole_element: false,
            })),
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
        let message = without_the_value(message.lines().next().unwrap_or_default());
        (inner, message)
    })
}

/// serde's "invalid type: string \"...\", expected ..." without the value
/// it quotes: a value of the wrong type may be a secret in the wrong place
/// (a key given as `api_key_envs = "sk-..."`), and problems are printed by
/// `--check`, logged by a reload and shown by `/readyz`. Its type stays.
fn without_the_value(message: &str) -> String {
    for lead in ["invalid type: ", "invalid value: ", "invalid length "] {
        let Some(rest) = message.strip_prefix(lead) else {
            continue;
        };
        let Some(expected) = rest.rfind(", expected ") else {
            break;
        };
        // `string "..."`, `integer `1``, `floating point `1.5``: the type.
        let unexpected = &rest[..expected];
        let kind = unexpected[..unexpected.find(['"', '`']).unwrap_or(unexpected.len())].trim_end();
        let wanted = &rest[expected + ", expected ".len()..];
        return format!("{lead}{kind}, expected {}", in_words(wanted));
    }
    message.to_string()
}

/// serde's name of a Rust number type in words an operator reads.
fn in_words(wanted: &str) -> &str {
    match wanted {
        "u8" | "u16" | "u64" | "usize" => "a whole number, 0 or more",
        "u32" => "a whole number from 0 to 4294967295",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        other => other,
    }
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
    let mut message = without_the_value(err.message().trim_end()).to_string();
    if message.contains("too large") {
        message.push_str(" (TOML's integers end at 9223372036854775807)");
    }
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

    /// A number past TOML's integers (a limit written as "unlimited")
    /// says where they end, not only that it is "too large".
    #[test]
    fn an_integer_past_tomls_range_says_where_it_ends() {
        let mut problems = Vec::new();
        parse(
            "[server]\nmax_body_bytes = 9223372036854775808\n",
            &mut problems,
        );
        let problem = problems[0].to_string();
        assert!(
            problem.ends_with("(TOML's integers end at 9223372036854775807)"),
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
            ask_stream_usage = true
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
        // What could be read is kept, for its own checks.
        assert_eq!(parsed.server.drain_secs, Some(5.0));
        assert_eq!(parsed.server.max_body_bytes, None);
        let [(name, moonshot)] = &parsed.providers[..] else {
            panic!("{:?}", parsed.providers)
        };
        assert_eq!(name, "moonshot");
        assert_eq!(moonshot.ask_stream_usage, Some(true));
        assert_eq!(moonshot.models, None);
        assert_eq!(moonshot.headers.as_ref().map(|h| h.len()), Some(0));
        // All but the unknown key.
        let mut unreadable = parsed.unreadable.clone();
        unreadable.sort();
        assert_eq!(unreadable, paths[1..]);
    }

    /// Each element of an array is tried alone, and each value of a table
    /// element: every bad one is reported at its own index, and a member
    /// an element lacks is reported too.
    #[test]
    fn every_bad_element_of_an_array_is_reported_at_its_index() {
        let mut problems = Vec::new();
        let text = r#"
            [providers.moonshot]
            models = ["kimi", 3, "k2", 4]
            [aliases.kimi]
            targets = [
                { provider = "moonshot", model = "a", weight = "x", priority = "y" },
                { model = "b" },
                { provider = "moonshot", model = "c", nap = 1 },
            ]
        "#;
        parse(text, &mut problems);
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "providers.moonshot.models[1]: invalid type: integer, expected a string",
                "providers.moonshot.models[3]: invalid type: integer, expected a string",
                "aliases.kimi.targets[0].weight: invalid type: string, expected a whole number from 0 to 4294967295",
                "aliases.kimi.targets[0].priority: invalid type: string, expected a whole number from 0 to 4294967295",
                "aliases.kimi.targets[1]: missing field `provider`",
                "aliases.kimi.targets[2].nap: unknown key",
            ],
        );
    }

    /// A value of the wrong type is named by its type, never quoted: it may
    /// be a secret put in the wrong place.
    #[test]
    fn a_wrong_typed_value_is_not_quoted() {
        let mut problems = Vec::new();
        let text = r#"
            [providers.moonshot]
            api_key_envs = "sk-hunter2"
            headers = "Bearer sk-hunter2"
            [keys]
            team = "ck-hunter2"
            [limits.global]
            requests_per_minute = 1.5
        "#;
        parse(text, &mut problems);
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "providers.moonshot.api_key_envs: invalid type: string, expected a sequence",
                "providers.moonshot.headers: invalid type: string, expected a map",
                "keys.team: invalid type: string, expected a table",
                "limits.global.requests_per_minute: invalid type: floating point, expected a whole number, 0 or more",
            ]
        );
        assert_eq!(
            without_the_value("invalid value: integer `-1`, expected u32"),
            "invalid value: integer, expected a whole number from 0 to 4294967295"
        );
        // Nor in a syntax error (an integer too large for TOML).
        let mut problems = Vec::new();
        parse(
            "[limits.global]\nrequests_per_minute = 12345678901234567890123\n",
            &mut problems,
        );
        let problem = problems[0].to_string();
        assert!(!problem.contains("1234567"), "{problem}");
    }

    /// The value a wrong-typed path names is taken out, also under a key
    /// that holds dots, and an array whole.
    #[test]
    fn unreadable_values_are_taken_out_by_path() {
        let mut value: toml::Value = toml::from_str(
            "a = 1\nb = { c = 2, d = 3 }\n\"kimi-k2.6\" = { e = 4, f = 5 }\ng = [{ h = 6 }]\n",
        )
        .unwrap();
        for path in ["a", "b.c", "kimi-k2.6.e", "g[0].h", "missing.x"] {
            remove_value(&mut value, path);
        }
        let expected: toml::Value =
            toml::from_str("b = { d = 3 }\n\"kimi-k2.6\" = { f = 5 }\n").unwrap();
        assert_eq!(value, expected);
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
