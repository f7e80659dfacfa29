//! What every handler shares: the live configuration snapshot. Reading it is
//! an atomic load, never a lock, so a reload cannot stall requests.

use crate::config::Config;
use arc_swap::ArcSwap;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    config: Arc<ArcSwap<Config>>,
}

impl AppState {
    pub fn new(config: Config) -> Self {
        AppState {
            config: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// The configuration a request runs on from start to end.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    pub fn replace_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }
}
