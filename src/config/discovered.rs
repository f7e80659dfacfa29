//! Model ids the providers' own `/models` listed, kept beside the
//! configuration and across reloads: each configuration built while a
//! provider's catalogue refresh is on adds them to its catalogue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What each provider's last successful `/models` listed, by provider name.
#[derive(Debug, Default)]
pub struct DiscoveredModels {
    by_provider: Mutex<HashMap<String, Listed>>,
}

/// One provider's list, and the base URL that listed it.
#[derive(Debug)]
struct Listed {
    base_url: String,
    ids: Arc<[String]>,
}

impl DiscoveredModels {
    /// The ids `provider` listed last at `base_url`, if it was asked there:
    /// a provider moved to another endpoint lists nothing until that one
    /// is asked (its models need not be the old endpoint's).
    pub fn get(&self, provider: &str, base_url: &str) -> Option<Arc<[String]>> {
        self.lock()
            .get(provider)
            .filter(|listed| listed.base_url == base_url)
            .map(|listed| listed.ids.clone())
    }

    /// Keeps `ids` as what `provider` lists at `base_url`; true when that
    /// changes which ids `picks` takes from the list (other ids coming or
    /// going, and any id moving, change no route, so they rebuild nothing).
    pub fn replace(
        &self,
        provider: &str,
        base_url: &str,
        ids: Vec<String>,
        picks: impl Fn(&str) -> bool,
    ) -> bool {
        let mut by_provider = self.lock();
        // As a set: a provider whose list comes in another order each time
        // must not rebuild the configuration at every ask.
        let picked = |ids: &[String]| {
            ids.iter()
                .filter(|id| picks(id))
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
        };
        let changed = match by_provider.get(provider) {
            Some(old) if old.base_url == base_url => picked(&old.ids) != picked(&ids),
            _ => true,
        };
        by_provider.insert(
            provider.to_string(),
            Listed {
                base_url: base_url.to_string(),
                ids: ids.into(),
            },
        );
        changed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listed>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.by_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::DiscoveredModels;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn only_a_change_in_what_is_picked_is_a_change() {
        let found = DiscoveredModels::default();
        let kimi = |id: &str| id.contains("kimi");
        let url = "http://p/v1";
        assert!(found.replace("p", url, ids(&["kimi-a", "gpt-1"]), kimi));
        // Other ids coming and going, or moving around, change nothing.
        assert!(!found.replace("p", url, ids(&["kimi-a", "gpt-2"]), kimi));
        assert!(!found.replace("p", url, ids(&["gpt-2", "kimi-a"]), kimi));
        // But they are kept, for a match a reload may change.
        assert_eq!(*found.get("p", url).unwrap(), ids(&["gpt-2", "kimi-a"]));
        assert!(found.replace("p", url, ids(&["kimi-a", "kimi-b"]), kimi));
        assert!(!found.replace("p", url, ids(&["kimi-b", "kimi-a"]), kimi));
        assert!(found.replace("p", url, ids(&["kimi-b"]), kimi));
    }

    #[test]
    fn a_list_belongs_to_the_endpoint_that_gave_it() {
        let found = DiscoveredModels::default();
        let every = |_: &str| true;
        assert!(found.replace("p", "http://old/v1", ids(&["kimi-a"]), every));
        assert!(found.get("p", "http://new/v1").is_none());
        assert!(found.replace("p", "http://new/v1", ids(&["kimi-a"]), every));
        assert!(found.get("p", "http://old/v1").is_none());
        assert_eq!(*found.get("p", "http://new/v1").unwrap(), ids(&["kimi-a"]));
    }
}
