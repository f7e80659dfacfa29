//! What a configuration leaves out of service, said the same way at start
//! and after each reload (the log), by `--check` and by `/readyz`: a
//! provider without its key (or with some of its keys), and a gateway that
//! can serve no chat request at all. `log_notes` also logs the limits that
//! can never refuse (`limit_notes`).

use super::{Config, Provider};

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
        }
    }

    /// What every chat request gets meanwhile.
    pub fn answer(self) -> &'static str {
        match self {
            OutOfService::NoProviderConfigured | OutOfService::NothingRoutable => {
                "404 model_not_found"
            }
            OutOfService::NoProviderUsable => "503 provider_not_configured",
        }
    }
}

impl std::fmt::Display for OutOfService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self {
            OutOfService::NothingRoutable => " (every provider's models list is empty)",
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
        } else {
            None
        }
    }

    /// Logs [`Config::key_notes`], [`Config::out_of_service`] and the
    /// limits that can never refuse (`limit_notes`): at start
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
        for note in &self.limit_notes {
            tracing::warn!("{note}");
        }
    }
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
}
