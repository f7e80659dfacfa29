//! Model ids the providers' own `/models` listed, kept beside the
//! configuration and across reloads: each configuration built while a
//! provider's catalogue refresh is on adds them to its catalogue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// What each provider's last successful `/models` listed, by provider name.
#[derive(Debug, Default)]
pub struct DiscoveredModels {
    by_provider: Mutex<HashMap<String, Arc<[String]>>>,
}

impl DiscoveredModels {
    /// The ids `provider` listed last, if it was ever asked.
    pub fn get(&self, provider: &str) -> Option<Arc<[String]>> {
        self.lock().get(provider).cloned()
    }

    /// Keeps `ids` as what `provider` lists; true when that changed.
    pub fn replace(&self, provider: &str, ids: Vec<String>) -> bool {
        let mut by_provider = self.lock();
        if by_provider.get(provider).is_some_and(|old| **old == *ids) {
            return false;
        }
        by_provider.insert(provider.to_string(), ids.into());
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<[String]>>> {
        // Nothing panics while holding it; a poisoned map is still whole.
        self.by_provider
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
