//! Model name -> ordered upstream targets. The table is built once per config
//! (every rule applied up front), so a request costs one hash lookup.
//!
//! Rules, strongest first:
//! 1. an alias from the config file;
//! 2. an exact model id some provider serves (several providers: their order);
//! 3. `<provider>/<model>` naming a configured provider and a model it serves.
//!
//! An exact id wins over rule 3 because AI/ML API's own ids start with `moonshot/`.

use crate::config::Provider;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Where one attempt goes: a provider and the model id it expects.
#[derive(Debug, Clone)]
pub struct Target {
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
    /// `upstream_model` as a JSON string, ready to splice into a request body.
    pub model_json: Bytes,
}

/// A client-facing model name and its targets, in the order to try them.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub targets: Vec<Target>,
}

impl Route {
    /// Targets whose provider has a key.
    pub fn usable_targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().filter(|t| t.provider.is_usable())
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

/// An alias as configured: a name and `(provider, upstream model)` pairs.
pub struct AliasSpec {
    pub name: String,
    pub targets: Vec<(Arc<Provider>, String)>,
}

/// All routable names, for lookup and for `GET /v1/models`.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_name: HashMap<Box<str>, Arc<Route>>,
    /// Names in listing order: exact ids, aliases, then `provider/model` forms.
    order: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn build(providers: &[Arc<Provider>], aliases: &[AliasSpec]) -> RouteTable {
        let mut exact: Vec<(String, Vec<Target>)> = Vec::new();
        let mut explicit: Vec<(String, Vec<Target>)> = Vec::new();
        for provider in providers {
            for model in &provider.models {
                let target = target(provider, model);
                match exact.iter_mut().find(|(name, _)| name == model) {
                    Some((_, targets)) => targets.push(target.clone()),
                    None => exact.push((model.clone(), vec![target.clone()])),
                }
                explicit.push((format!("{}/{}", provider.name, model), vec![target]));
            }
        }
        let aliased: Vec<(String, Vec<Target>)> = aliases
            .iter()
            .map(|a| {
                let targets = a.targets.iter().map(|(p, m)| target(p, m)).collect();
                (a.name.clone(), targets)
            })
            .collect();

        let mut table = RouteTable::default();
        // Inserted weakest rule first, so a stronger rule replaces a weaker one.
        for (name, targets) in explicit.into_iter().chain(exact).chain(aliased) {
            let route = Arc::new(Route {
                name: name.as_str().into(),
                targets,
            });
            if let Some(old) = table.by_name.insert(name.into_boxed_str(), route.clone()) {
                table.order.retain(|r| !Arc::ptr_eq(r, &old));
            }
            table.order.push(route);
        }
        // List exact ids and aliases before the longer `provider/model` forms.
        let is_explicit = |r: &Arc<Route>| {
            r.targets.len() == 1
                && r.name.len() > r.targets[0].provider.name.len()
                && r.name.starts_with(&*r.targets[0].provider.name)
                && r.name.as_bytes()[r.targets[0].provider.name.len()] == b'/'
                && r.name[r.targets[0].provider.name.len() + 1..] == *r.targets[0].upstream_model
        };
        table.order.sort_by_key(|r| is_explicit(r));
        table
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

fn target(provider: &Arc<Provider>, model: &str) -> Target {
    Target {
        provider: provider.clone(),
        upstream_model: model.into(),
        model_json: serde_json::to_vec(model)
            .expect("a string serialises")
            .into(),
    }
}
