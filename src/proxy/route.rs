//! Model name -> ordered upstream targets. The table is built once per config
//! (every rule applied up front), so a request costs one hash lookup.
//!
//! Rules, strongest first:
//! 1. an alias from the config file;
//! 2. an exact model id some provider serves (several providers: their order,
//!    those whose catalogue a refresh extended with it after the others);
//! 3. `<provider>/<model>` naming a configured provider and a model it serves.
//!
//! An exact id wins over rule 3 because AI/ML API's own ids start with `moonshot/`,
//! but only a configured one: an id a catalogue refresh discovered never
//! takes a `<provider>/<model>` name that routes to that provider, so a
//! client that pins a provider stays pinned whatever another one lists.
//! A provider with several keys contributes one target per key.

use super::breaker::{Breaker, BreakerRegistry};
use crate::config::{ApiKey, Provider};
use crate::metric_series::TargetSeries;
use crate::metrics::Metrics;
use bytes::Bytes;
use foldhash::HashMap;
use std::sync::{Arc, OnceLock};

/// Where one attempt goes: a provider, one of its keys, and the model id it
/// expects.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub key_index: usize,
    pub upstream_model: Arc<str>,
    /// `upstream_model` as a JSON string, ready to splice into a request body.
    pub model_json: Bytes,
    /// `model_json` followed by `,"stream_options":{"include_usage":true}`,
    /// when the provider is asked for a stream's usage.
    pub model_json_asking_usage: Option<Bytes>,
    /// Lower is tried first.
    pub priority: u32,
    /// Share of traffic among targets of equal priority: the configured
    /// target's weight split evenly among its provider's keys, so a
    /// provider with three keys gets the share its weight says, not three
    /// times it.
    pub weight: f64,
    pub breaker: Arc<Breaker>,
    /// `provider/model`, with `#N` after the provider for its N-th key.
    pub label: Arc<str>,
    /// The metric series of this target's route and provider, resolved on
    /// first use: a request then reads it twice (the exchange, the
    /// attempt's success) without a lookup. Filled only once the route
    /// table is built, so every route's targets fill their own.
    series: OnceLock<Arc<TargetSeries>>,
}

impl Target {
    /// The series of `route` (the route this target is one of) for its
    /// provider.
    pub fn series(&self, metrics: &Metrics, route: &str) -> &Arc<TargetSeries> {
        self.series
            .get_or_init(|| metrics.series(route, &self.provider.name))
    }

    pub fn key(&self) -> Option<&ApiKey> {
        self.provider.keys.get(self.key_index)
    }

    pub fn is_usable(&self) -> bool {
        self.key().is_some()
    }
}

/// A client-facing model name and its targets, in the order to try them.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub rule: RouteRule,
}

/// Which routing rule produced a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteRule {
    Alias,
    Exact,
    ProviderPrefix,
}

impl Route {
    /// Targets that have a key.
    pub fn usable_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| t.is_usable())
    }

    /// The key variables that would make this route usable, for the error
    /// a client gets when none of its providers has a key.
    pub fn missing_key_vars(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = Vec::new();
        for target in &self.targets {
            let var = target.provider.api_key_env.as_str();
            if !target.provider.is_usable() && !vars.contains(&var) {
                vars.push(var);
            }
        }
        vars
    }
}

/// One target of an alias, as configured.
pub struct AliasTarget {
    pub provider: Arc<Provider>,
    pub model: String,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
}

/// An alias as configured: a name and its targets.
pub struct AliasSpec {
    pub name: String,
    pub targets: Vec<AliasTarget>,
}

/// All routable names, for lookup and for `GET /v1/models`.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_name: HashMap<Box<str>, Arc<Route>>,
    /// Names in listing order: exact ids, aliases, then `provider/model` forms.
    order: Vec<Arc<Route>>,
    /// Names only a catalogue refresh made routable (not the file's or a
    /// built-in catalogue's): a client key may not be limited to one, or a
    /// file that loads now would be refused at the next start.
    found_only: foldhash::HashSet<Box<str>>,
}

impl RouteTable {
    pub fn build(
        providers: &[Arc<Provider>],
        aliases: &[AliasSpec],
        breakers: &mut BreakerRegistry,
    ) -> RouteTable {
        let mut exact: Vec<(String, Vec<Target>)> = Vec::new();
        // Where each name is in `exact`: found by hash, not by a walk of
        // the list per id, which made a catalogue of many thousands slow.
        let mut exact_at: foldhash::HashMap<String, usize> = foldhash::HashMap::default();
        let mut explicit: Vec<(String, Vec<Target>)> = Vec::new();
        let pinned: foldhash::HashSet<String> = providers
            .iter()
            .flat_map(|p| p.models.iter().map(move |m| format!("{}/{m}", p.name)))
            .collect();
        let names_a_provider_model = |id: &str| pinned.contains(id);
        let mut configured: foldhash::HashSet<String> =
            aliases.iter().map(|a| a.name.clone()).collect();
        // An id a refresh found comes after every provider configured with
        // it: a reseller that starts listing a model does not take the
        // traffic of the provider the file gave it to.
        let found_rank = providers.len();
        for (rank, provider) in providers.iter().enumerate() {
            for (i, model) in provider.models.iter().enumerate() {
                let discovered = i >= provider.configured_models;
                let priority = if discovered { found_rank + rank } else { rank };
                let targets = targets(provider, model, priority as u32, 1, breakers);
                if !discovered {
                    configured.insert(model.clone());
                    configured.insert(format!("{}/{}", provider.name, model));
                }
                // Reachable still as `<this provider>/<id>`.
                if !(discovered && names_a_provider_model(model)) {
                    match exact_at.get(model) {
                        Some(&at) => exact[at].1.extend(targets.iter().cloned()),
                        None => {
                            exact_at.insert(model.clone(), exact.len());
                            exact.push((model.clone(), targets.clone()));
                        }
                    }
                }
                explicit.push((format!("{}/{}", provider.name, model), targets));
            }
        }
        for (_, targets) in &mut exact {
            // Stable: a provider's keys keep their order.
            targets.sort_by_key(|t| t.priority);
        }
        let aliased: Vec<(String, Vec<Target>)> = aliases
            .iter()
            .map(|a| {
                let mut all: Vec<Target> = Vec::new();
                for (i, t) in a.targets.iter().enumerate() {
                    let priority = t.priority.unwrap_or(i as u32);
                    let weight = t.weight.unwrap_or(1);
                    all.extend(targets(&t.provider, &t.model, priority, weight, breakers));
                }
                all.sort_by_key(|t| t.priority);
                (a.name.clone(), all)
            })
            .collect();

        let mut table = RouteTable::default();
        // Inserted weakest rule first, so a stronger rule replaces a weaker one.
        let tagged = explicit
            .into_iter()
            .map(|r| (r, RouteRule::ProviderPrefix))
            .chain(exact.into_iter().map(|r| (r, RouteRule::Exact)))
            .chain(aliased.into_iter().map(|r| (r, RouteRule::Alias)));
        for ((name, targets), rule) in tagged {
            let route = Arc::new(Route {
                name: name.as_str().into(),
                targets,
                rule,
            });
            if let Some(old) = table.by_name.insert(name.into_boxed_str(), route.clone()) {
                table.order.retain(|r| !Arc::ptr_eq(r, &old));
            }
            table.order.push(route);
        }
        // List exact ids and aliases before the longer `provider/model` forms.
        table
            .order
            .sort_by_key(|r| r.rule == RouteRule::ProviderPrefix);
        table.found_only = table
            .by_name
            .keys()
            .filter(|name| !configured.contains(&***name))
            .cloned()
            .collect();
        table
    }

    /// Whether `model` is routable by the configuration itself, before
    /// any catalogue refresh: a name a client key's `models` may hold.
    pub fn routes_without_refresh(&self, model: &str) -> bool {
        self.by_name.contains_key(model) && !self.found_only.contains(model)
    }

    /// The route for a client's model name, if any rule matches.
    pub fn lookup(&self, model: &str) -> Option<&Arc<Route>> {
        self.by_name.get(model)
    }

    /// Every routable name, in listing order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.order
    }
}

/// What follows the model id in a stream request the provider is asked to
/// report usage in: a member after `model`'s value keeps the object valid
/// wherever `model` is.
const ASK_USAGE: &[u8] = br#","stream_options":{"include_usage":true}"#;

/// The targets of one provider model: one per key (or one unusable target
/// when the provider has no key, so errors can name the missing variable).
fn targets(
    provider: &Arc<Provider>,
    model: &str,
    priority: u32,
    weight: u32,
    breakers: &mut BreakerRegistry,
) -> Vec<Target> {
    let model_json: Bytes = serde_json::to_vec(model)
        .expect("a string serialises")
        .into();
    let model_json_asking_usage = provider
        .ask_stream_usage
        .then(|| [&model_json[..], ASK_USAGE].concat().into());
    let key_count = provider.keys.len().max(1);
    let share = f64::from(weight.max(1)) / key_count as f64;
    (0..key_count)
        .map(|key_index| {
            let label = if key_index == 0 {
                format!("{}/{model}", provider.name)
            } else {
                format!("{}#{}/{model}", provider.name, key_index + 1)
            };
            // The key's own variable, not its place in the list: a
            // provider's other keys added, removed or reordered leave this
            // target's circuit as it is.
            let key_env = provider
                .keys
                .get(key_index)
                .map_or(&*provider.api_key_env, |key| &*key.env);
            let identity = format!("{}/{model}|{}|{key_env}", provider.name, provider.base_url);
            Target {
                provider: provider.clone(),
                key_index,
                upstream_model: model.into(),
                model_json: model_json.clone(),
                model_json_asking_usage: model_json_asking_usage.clone(),
                priority,
                weight: share,
                breaker: breakers.get(&identity, &label),
                label: label.into(),
                series: OnceLock::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::resolve;
    use std::sync::Arc;

    /// Resolves `model` against presets (+ `toml`) with every key set, and
    /// returns (provider, upstream id) of each target.
    fn route(toml: &str, model: &str) -> Option<Vec<(String, String)>> {
        let config = resolve(toml, &|var| {
            var.ends_with("_API_KEY").then(|| "k".to_string())
        })
        .unwrap();
        config.routes.lookup(model).map(|r| {
            r.targets
                .iter()
                .map(|t| (t.provider.name.to_string(), t.upstream_model.to_string()))
                .collect()
        })
    }

    fn pair(p: &str, m: &str) -> (String, String) {
        (p.to_string(), m.to_string())
    }

    /// A target's cached series is its own route's: the exact id and the
    /// `provider/model` form start from copies of the same targets.
    #[test]
    fn each_route_resolves_its_own_series() {
        let config = resolve("", &|var| {
            var.ends_with("_API_KEY").then(|| "k".to_string())
        })
        .unwrap();
        let metrics = crate::metrics::Metrics::new();
        let mut seen = Vec::new();
        for name in ["kimi-k2-turbo-preview", "moonshot/kimi-k2-turbo-preview"] {
            let route = config.routes.lookup(name).unwrap();
            let target = &route.targets[0];
            let series = target.series(&metrics, &route.name).clone();
            assert!(Arc::ptr_eq(&series, &metrics.series(name, "moonshot")));
            assert!(Arc::ptr_eq(&series, target.series(&metrics, &route.name)));
            seen.push(series);
        }
        assert!(!Arc::ptr_eq(&seen[0], &seen[1]));
    }

    #[test]
    fn exact_name_of_one_provider() {
        assert_eq!(
            route("", "kimi-k2-turbo-preview"),
            Some(vec![pair("moonshot", "kimi-k2-turbo-preview")])
        );
        assert_eq!(
            route("", "kimi-chat"),
            Some(vec![pair("agentsflare", "kimi-chat")])
        );
    }

    #[test]
    fn a_shared_name_lists_providers_in_preset_order() {
        assert_eq!(
            route("", "kimi-k2.6"),
            Some(vec![
                pair("moonshot", "kimi-k2.6"),
                pair("agentsflare", "kimi-k2.6")
            ])
        );
    }

    #[test]
    fn provider_prefix_picks_one_provider() {
        assert_eq!(
            route("", "agentsflare/kimi-k2.6"),
            Some(vec![pair("agentsflare", "kimi-k2.6")])
        );
        assert_eq!(
            route("", "aimlapi/moonshot/kimi-k2-preview"),
            Some(vec![pair("aimlapi", "moonshot/kimi-k2-preview")])
        );
    }

    #[test]
    fn an_exact_id_wins_over_the_provider_prefix_form() {
        // "moonshot/kimi-k2-preview" is AI/ML API's own id, not Moonshot's
        // "kimi-k2-preview" (which Moonshot does not serve anyway).
        assert_eq!(
            route("", "moonshot/kimi-k2-preview"),
            Some(vec![pair("aimlapi", "moonshot/kimi-k2-preview")])
        );
        // Even when the prefix form would also resolve.
        let toml = "[providers.moonshot]\nextra_models = [\"kimi-k2-preview\"]\n";
        assert_eq!(
            route(toml, "moonshot/kimi-k2-preview"),
            Some(vec![pair("aimlapi", "moonshot/kimi-k2-preview")])
        );
    }

    #[test]
    fn the_prefix_form_needs_a_model_the_provider_serves() {
        assert_eq!(route("", "moonshot/kimi-chat"), None);
        assert_eq!(route("", "nobody/kimi-k2.6"), None);
    }

    #[test]
    fn an_alias_wins_over_everything_and_keeps_its_order() {
        let toml = r#"
            [aliases."kimi-k2.6"]
            targets = [{ provider = "agentsflare", model = "kimi-k2.6" },
                       { provider = "aimlapi", model = "moonshot/kimi-k2-6" }]
        "#;
        assert_eq!(
            route(toml, "kimi-k2.6"),
            Some(vec![
                pair("agentsflare", "kimi-k2.6"),
                pair("aimlapi", "moonshot/kimi-k2-6")
            ])
        );
    }

    #[test]
    fn unknown_names_do_not_route() {
        assert_eq!(route("", "gpt-4o"), None);
        assert_eq!(route("", ""), None);
        assert_eq!(route("", "KIMI-K2.6"), None, "names are case-sensitive");
    }

    #[test]
    fn listing_puts_exact_names_and_aliases_before_prefix_forms() {
        let toml = "[aliases.fast]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2-turbo-preview\" }]\n";
        let config = resolve(toml, &|v| v.ends_with("_API_KEY").then(|| "k".to_string())).unwrap();
        let names: Vec<&str> = config.routes.routes().iter().map(|r| &*r.name).collect();
        let first_prefixed = names
            .iter()
            .position(|n| *n == "moonshot/kimi-k2.6")
            .unwrap();
        assert!(names.iter().position(|n| *n == "fast").unwrap() < first_prefixed);
        assert!(names.iter().position(|n| *n == "kimi-chat").unwrap() < first_prefixed);
        let unique: std::collections::HashSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "each name listed once");
    }
}
