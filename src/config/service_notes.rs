//! What a configuration leaves out of service, said the same way at start
//! and after each reload (the log), by `--check` and by `/readyz`: a
//! provider without its key (or with some of its keys), what serves
//! nothing though it is configured (a keyed provider without models, an
//! alias or a client key's model no keyed provider serves), and a gateway
//! that can serve no chat request at all. `log_notes` also logs the other
//! notes (`limit_notes`, `key_exposure`).

use super::{Config, ConfigProblem, Provider};
use crate::auth::KeyTable;
use crate::proxy::route::{Route, RouteRule, RouteTable};
use std::sync::Arc;

/// A provider whose key variables are not all set.
pub enum KeyNote<'a> {
    /// No key at all: the provider is not served.
    NotServed(&'a Provider),
    /// Served with the keys that are set; these variables are not.
    FewerKeys(&'a Provider, Vec<&'a str>),
}

impl std::fmt::Display for KeyNote<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyNote::NotServed(provider) => write!(
                f,
                "provider {} is not served: {} is not set (or blank)",
                provider.name, provider.api_key_env
            ),
            KeyNote::FewerKeys(provider, unset) => write!(
                f,
                "provider {} is served with {} of its {} keys (not set or blank: {})",
                provider.name,
                provider.keys.len(),
                provider.key_envs.len(),
                unset.join(", ")
            ),
        }
    }
}

/// Why no chat request can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfService {
    /// Every provider disabled: no model name is known.
    NoProviderConfigured,
    /// No provider has a key.
    NoProviderUsable,
    /// Every catalogue emptied, no alias, and no provider refreshing its
    /// catalogue that may yet find a model.
    NothingRoutable,
    /// Providers have keys, but none of them serves a model (their
    /// catalogues emptied, none refreshing), while the providers without a
    /// key list some.
    NothingServed,
}

impl OutOfService {
    /// The short reason `/readyz` gives.
    pub fn reason(self) -> &'static str {
        match self {
            OutOfService::NoProviderConfigured => {
                "no provider is configured (every one is disabled)"
            }
            OutOfService::NoProviderUsable => "no provider has an API key",
            OutOfService::NothingRoutable => "no model is routable",
            OutOfService::NothingServed => "no provider with an API key serves a model",
        }
    }

    /// What every chat request gets meanwhile.
    pub fn answer(self) -> &'static str {
        match self {
            OutOfService::NoProviderConfigured | OutOfService::NothingRoutable => {
                "404 model_not_found"
            }
            OutOfService::NoProviderUsable | OutOfService::NothingServed => {
                "503 provider_not_configured"
            }
        }
    }
}

impl std::fmt::Display for OutOfService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self {
            OutOfService::NothingRoutable => " (every provider's models list is empty)",
            OutOfService::NothingServed => {
                " (the models lists of the providers with a key are empty)"
            }
            _ => "",
        };
        write!(
            f,
            "{}{why}: every chat request gets {}",
            self.reason(),
            self.answer()
        )
    }
}

impl Config {
    /// Each provider whose key variables are not all set, in order.
    pub fn key_notes(&self) -> impl Iterator<Item = KeyNote<'_>> {
        self.providers.iter().filter_map(|provider| {
            if !provider.is_usable() {
                return Some(KeyNote::NotServed(provider));
            }
            let unset = provider.unset_key_envs();
            (!unset.is_empty()).then(|| KeyNote::FewerKeys(provider, unset))
        })
    }

    /// Why this configuration can serve no chat request, if it cannot.
    pub fn out_of_service(&self) -> Option<OutOfService> {
        // In the order that decides what a request gets: no name routes
        // (404) before no key for the names that do (503).
        if self.providers.is_empty() {
            Some(OutOfService::NoProviderConfigured)
        } else if self.routes.routes().is_empty()
            && !self.usable_providers().any(|p| p.models_refresh.is_some())
        {
            Some(OutOfService::NothingRoutable)
        } else if self.usable_providers().next().is_none() {
            Some(OutOfService::NoProviderUsable)
        } else if !self.routes.routes().iter().any(|r| is_served(r))
            && !self.usable_providers().any(|p| p.models_refresh.is_some())
        {
            Some(OutOfService::NothingServed)
        } else {
            None
        }
    }

    /// Logs [`Config::key_notes`], [`Config::out_of_service`] and the
    /// other notes ([`Config::notes`]): at start
    /// and after each reload, so a configuration that takes providers out
    /// of service says so where the operator looks, not only in `/readyz`.
    pub fn log_notes(&self) {
        for note in self.key_notes() {
            let provider = match &note {
                KeyNote::NotServed(p) | KeyNote::FewerKeys(p, _) => &*p.name,
            };
            tracing::warn!(provider, "{note}");
        }
        if let Some(problem) = self.out_of_service() {
            tracing::warn!("{problem}");
        }
        for note in &self.notes {
            tracing::warn!("{note}");
        }
    }
}

/// Whether some target of `route` has a key.
fn is_served(route: &Route) -> bool {
    route.usable_targets().next().is_some()
}

/// What a configuration names but serves nothing for, though it is valid:
/// a provider with a key and no model (no catalogue refresh to find some,
/// no alias to send it one), an alias none of whose targets' providers has a key, and a model
/// in a client key's `models` that only providers without a key serve.
/// Requests for these get 503 `provider_not_configured` (the provider's
/// models: 404), which a configuration check should say before a client
/// finds out.
pub(super) fn unserved_notes(
    providers: &[Arc<Provider>],
    routes: &RouteTable,
    keys: &KeyTable,
) -> Vec<ConfigProblem> {
    let mut notes = Vec::new();
    // An alias may send any model id to a provider whose catalogue is
    // empty: such a provider serves through it.
    let aliased = |provider: &Provider| {
        routes.routes().iter().any(|route| {
            route.rule == RouteRule::Alias
                && route
                    .targets
                    .iter()
                    .any(|t| std::ptr::eq(&*t.provider, provider))
        })
    };
    for provider in providers {
        if provider.is_usable()
            && provider.models.is_empty()
            && provider.models_refresh.is_none()
            && !aliased(provider)
        {
            notes.push(ConfigProblem::new(
                format!("providers.{}.models", provider.name),
                "lists no model, and no refresh_models_secs asks the provider for some: \
                 the provider has a key but serves nothing",
            ));
        }
    }
    let unserved = |route: &Route| {
        format!(
            "no provider has a key (set {}): every request for it gets 503 provider_not_configured",
            route.missing_key_vars().join(" or ")
        )
    };
    for route in routes.routes() {
        if route.rule == RouteRule::Alias && !is_served(route) {
            notes.push(ConfigProblem::new(
                format!("aliases.{}", route.name),
                unserved(route),
            ));
        }
    }
    let mut keys: Vec<_> = keys.iter().collect();
    keys.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    for key in keys {
        let mut models: Vec<&str> = key.models.iter().flatten().map(|m| &**m).collect();
        models.sort_unstable();
        for model in models {
            if let Some(route) = routes.lookup(model)
                && !is_served(route)
            {
                notes.push(ConfigProblem::new(
                    format!("keys.{}.models", key.name),
                    format!("{model:?}: {}", unserved(route)),
                ));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_of_service(text: &str, keyed: bool) -> Option<OutOfService> {
        let env = |v: &str| (keyed && v.ends_with("_API_KEY")).then(|| "k".to_string());
        crate::config::resolve(text, &env).unwrap().out_of_service()
    }

    /// What is said is what a chat request gets: with no catalogue left,
    /// 404 whether or not keys are set; with names but no key, 503.
    #[test]
    fn the_problem_named_is_the_one_requests_meet() {
        let emptied = "[providers.moonshot]\nmodels = []\n[providers.aimlapi]\nmodels = []\n\
                       [providers.agentsflare]\nmodels = []\n";
        for keyed in [true, false] {
            let problem = out_of_service(emptied, keyed);
            assert_eq!(
                problem,
                Some(OutOfService::NothingRoutable),
                "keys set: {keyed}"
            );
            assert_eq!(problem.unwrap().answer(), "404 model_not_found");
        }
        let problem = out_of_service("", false);
        assert_eq!(problem, Some(OutOfService::NoProviderUsable));
        assert_eq!(problem.unwrap().answer(), "503 provider_not_configured");
        assert_eq!(out_of_service("", true), None);
        let disabled = "[providers.moonshot]\nenabled = false\n[providers.aimlapi]\nenabled = false\n\
                        [providers.agentsflare]\nenabled = false\n";
        assert_eq!(
            out_of_service(disabled, true),
            Some(OutOfService::NoProviderConfigured)
        );
    }

    /// Keys set for Moonshot only: what is configured but served by no
    /// keyed provider is noted, with the variable that would serve it.
    #[test]
    fn what_only_providers_without_a_key_serve_is_noted() {
        let env = |v: &str| match v {
            "MOONSHOT_API_KEY" | "EXTRA_KEY" | "TEAM_KEY" => Some(format!("{v}-value")),
            _ => None,
        };
        let text = "[providers.extra]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                    api_key_env = \"EXTRA_KEY\"\n\
                    [aliases.fast]\ntargets = [{ provider = \"aimlapi\", model = \"m\" }]\n\
                    [aliases.served]\ntargets = [{ provider = \"moonshot\", model = \"m\" }]\n\
                    [keys.team]\nsecret_env = \"TEAM_KEY\"\n\
                    models = [\"served\", \"fast\", \"agentsflare/kimi-k2.6\"]\n";
        let config = crate::config::resolve(text, &env).unwrap();
        let notes: Vec<String> = config.notes.iter().map(ToString::to_string).collect();
        let unserved = "no provider has a key (set AIMLAPI_API_KEY): every request for it gets \
                        503 provider_not_configured";
        assert_eq!(
            notes,
            [
                "providers.extra.models: lists no model, and no refresh_models_secs asks the \
                 provider for some: the provider has a key but serves nothing"
                    .to_string(),
                format!("aliases.fast: {unserved}"),
                "keys.team.models: \"agentsflare/kimi-k2.6\": no provider has a key (set \
                 AGENTSFLARE_API_KEY): every request for it gets 503 provider_not_configured"
                    .to_string(),
                format!("keys.team.models: \"fast\": {unserved}"),
            ]
        );
        assert_eq!(config.out_of_service(), None);
        // A provider with no catalogue that an alias sends a model serves.
        let aliased = "[providers.extra]\nbase_url = \"http://127.0.0.1:9/v1\"\n\
                       api_key_env = \"EXTRA_KEY\"\n\
                       [aliases.via]\ntargets = [{ provider = \"extra\", model = \"m\" }]\n";
        let config = crate::config::resolve(aliased, &env).unwrap();
        assert!(
            config
                .notes
                .iter()
                .all(|n| n.path != "providers.extra.models"),
            "{:?}",
            config.notes
        );
    }

    /// Keys set, but only for providers whose catalogues are emptied: the
    /// names the others list get 503, as they would with no key at all.
    #[test]
    fn keyed_providers_without_models_leave_the_gateway_out_of_service() {
        let problem = out_of_service("[providers.moonshot]\nmodels = []\n", true);
        assert_eq!(problem, None, "every preset keyed: the others serve");
        let env = |v: &str| (v == "MOONSHOT_API_KEY").then(|| "k".to_string());
        let config = crate::config::resolve("[providers.moonshot]\nmodels = []\n", &env).unwrap();
        let problem = config.out_of_service();
        assert_eq!(problem, Some(OutOfService::NothingServed));
        assert_eq!(problem.unwrap().answer(), "503 provider_not_configured");
        assert_eq!(
            problem.unwrap().reason(),
            "no provider with an API key serves a model"
        );
    }
}
