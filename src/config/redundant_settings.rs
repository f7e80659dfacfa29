//! Settings that do nothing where the file puts them, most likely a slip: a
//! model id listed twice in a provider's catalogue (the repeat is ignored), an alias target listed
//! twice (the second is a retry of the first, not another provider), a
//! `refresh_models_match` without the `refresh_models_secs` that would use
//! it. Valid, so not problems, but `--check` and the log note them.

use super::ConfigProblem;
use super::file::{AliasFile, ProviderFile};

/// Every redundant setting of the file's provider and alias tables, by key
/// path.
pub fn redundant_settings(
    providers: &[(String, ProviderFile)],
    aliases: &[(String, AliasFile)],
) -> Vec<ConfigProblem> {
    let mut notes = Vec::new();
    for (name, provider) in providers {
        for list in ["models", "extra_models"] {
            let ids = match list {
                "models" => &provider.models,
                _ => &provider.extra_models,
            };
            for (i, id) in ids.iter().flatten().enumerate() {
                let earlier = ids.iter().flatten().take(i).position(|other| other == id);
                if let Some(first) = earlier {
                    notes.push(ConfigProblem::new(
                        format!("providers.{name}.{list}[{i}]"),
                        format!(
                            "{id:?} is listed already ({list}[{first}]): the repeat is ignored"
                        ),
                    ));
                }
            }
        }
        if provider.refresh_models_match.is_some() && provider.refresh_models_secs.is_none() {
            notes.push(ConfigProblem::new(
                format!("providers.{name}.refresh_models_match"),
                "does nothing without refresh_models_secs (the catalogue is not refreshed)",
            ));
        }
    }
    for (name, alias) in aliases {
        for (i, target) in alias.targets.iter().enumerate() {
            let same = |other: &&super::file::TargetFile| {
                other.provider == target.provider && other.model == target.model
            };
            if let Some(first) = alias.targets.iter().take(i).position(|t| same(&t)) {
                notes.push(ConfigProblem::new(
                    format!("aliases.{name}.targets[{i}]"),
                    format!(
                        "repeats targets[{first}] ({}, {:?}): a failed first try would be tried \
                         again there, not on another provider; a larger weight gives a target \
                         a larger share",
                        target.provider, target.model
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
        let mut problems = Vec::new();
        let parsed = super::super::parse::parse(text, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        redundant_settings(&parsed.providers, &parsed.aliases)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn repeats_and_a_match_without_a_refresh_are_noted() {
        let found = notes(
            "[providers.moonshot]\nmodels = [\"a\", \"b\", \"a\"]\nextra_models = [\"c\", \"c\"]\n\
             refresh_models_match = [\"kimi\"]\n\
             [aliases.fast]\ntargets = [{ provider = \"moonshot\", model = \"a\" }, \
             { provider = \"aimlapi\", model = \"a\" }, { provider = \"moonshot\", model = \"a\" }]\n",
        );
        assert_eq!(
            found,
            [
                "providers.moonshot.models[2]: \"a\" is listed already (models[0]): the repeat \
                 is ignored",
                "providers.moonshot.extra_models[1]: \"c\" is listed already (extra_models[0]): \
                 the repeat is ignored",
                "providers.moonshot.refresh_models_match: does nothing without \
                 refresh_models_secs (the catalogue is not refreshed)",
                "aliases.fast.targets[2]: repeats targets[0] (moonshot, \"a\"): a failed first \
                 try would be tried again there, not on another provider; a larger weight gives \
                 a target a larger share",
            ]
        );
    }

    #[test]
    fn distinct_settings_are_not_noted() {
        assert!(
            notes(
                "[providers.moonshot]\nmodels = [\"a\", \"b\"]\nextra_models = [\"a\"]\n\
                 refresh_models_secs = 600\nrefresh_models_match = [\"kimi\"]\n\
                 [aliases.fast]\ntargets = [{ provider = \"moonshot\", model = \"a\" }, \
                 { provider = \"moonshot\", model = \"b\" }]\n"
            )
            .is_empty()
        );
    }
}
