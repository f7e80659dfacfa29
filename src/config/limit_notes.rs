//! Limits written so that one of them can never refuse anything: a day
//! budget no larger than the same scope's minute limit leaves the minute
//! limit idle. Valid, so not a problem, but most likely a slip (two values
//! swapped, a day meant larger), so `--check` and the log note it.

use super::ConfigProblem;
use super::file::{KeyFile, LimitSpecFile, LimitsFile};

/// Every limit table in the file with a minute limit its day limit
/// overrides, by key path.
pub fn limit_notes(limits: &LimitsFile, keys: &[(String, KeyFile)]) -> Vec<ConfigProblem> {
    let mut tables: Vec<(String, &LimitSpecFile)> = Vec::new();
    if let Some(global) = &limits.global {
        tables.push(("limits.global".into(), global));
    }
    for (name, spec) in limits.providers.iter().flatten() {
        tables.push((format!("limits.providers.{name}"), spec));
    }
    for (name, key) in keys {
        if let Some(spec) = &key.limits {
            tables.push((format!("keys.{name}.limits"), spec));
        }
        for (model, spec) in key.model_limits.iter().flatten() {
            tables.push((format!("keys.{name}.model_limits.{model:?}"), spec));
        }
    }
    let mut notes = Vec::new();
    for (path, spec) in tables {
        let pairs = [
            ("requests", spec.requests_per_minute, spec.requests_per_day),
            ("tokens", spec.tokens_per_minute, spec.tokens_per_day),
        ];
        for (what, minute, day) in pairs {
            // Zero is a problem reported elsewhere, not an idle limit.
            if let (Some(minute), Some(day)) = (minute, day)
                && (1..=minute).contains(&day)
            {
                notes.push(ConfigProblem::new(
                    format!("{path}.{what}_per_minute"),
                    format!(
                        "{minute} never refuses a request: {what}_per_day = {day} \
                         allows no more in a whole day"
                    ),
                ));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(text: &str) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            limits: LimitsFile,
            #[serde(default)]
            keys: std::collections::BTreeMap<String, KeyFile>,
        }
        let file: File = toml::from_str(text).unwrap();
        let keys: Vec<_> = file.keys.into_iter().collect();
        limit_notes(&file.limits, &keys)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_day_limit_at_or_below_the_minute_limit_is_noted_in_every_scope() {
        let found = notes(
            "[limits.global]\nrequests_per_minute = 100\nrequests_per_day = 50\n\
             [limits.providers.moonshot]\ntokens_per_minute = 1000\ntokens_per_day = 1000\n\
             [keys.team]\nsecret_env = \"T\"\nlimits = { requests_per_minute = 5, requests_per_day = 4 }\n\
             model_limits.\"kimi-k2\" = { tokens_per_minute = 9, tokens_per_day = 2 }\n",
        );
        assert_eq!(
            found,
            [
                "limits.global.requests_per_minute: 100 never refuses a request: \
                 requests_per_day = 50 allows no more in a whole day",
                "limits.providers.moonshot.tokens_per_minute: 1000 never refuses a request: \
                 tokens_per_day = 1000 allows no more in a whole day",
                "keys.team.limits.requests_per_minute: 5 never refuses a request: \
                 requests_per_day = 4 allows no more in a whole day",
                "keys.team.model_limits.\"kimi-k2\".tokens_per_minute: 9 never refuses a request: \
                 tokens_per_day = 2 allows no more in a whole day",
            ]
        );
    }

    #[test]
    fn limits_that_can_each_refuse_are_not_noted() {
        assert!(
            notes(
                "[limits.global]\nrequests_per_minute = 100\nrequests_per_day = 101\n\
                 tokens_per_day = 5\nconcurrent_requests = 1\n\
                 [limits.providers.moonshot]\ntokens_per_minute = 0\ntokens_per_day = 0\n"
            )
            .is_empty()
        );
    }
}
