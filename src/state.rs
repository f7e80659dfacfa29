//! What every handler shares: the live configuration snapshot, the drain
//! state and the last reload's outcome. Reading the configuration is an
//! atomic load, never a lock, so a reload cannot stall requests.

use crate::answer_budget::AnswerBudget;
use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Reads an environment variable; reloads re-read keys and base URLs.
pub type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A handle on the shared state: one reference count to clone per request
/// (axum hands every extractor and middleware its own copy).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    config: ArcSwap<Config>,
    pub drain: Arc<Drain>,
    reload: Mutex<ReloadStatus>,
    pub env: EnvLookup,
    /// Outlives configurations: counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// The listen address given on the command line (or its environment
    /// variable), which `server.listen` does not change.
    pub listen_override: std::sync::OnceLock<std::net::SocketAddr>,
    /// The settings only a restart changes, as the gateway started with
    /// them: a reload compares the file with these, not with the file
    /// before it, so a change still waiting for a restart is warned about
    /// at every reload, and one set back to what runs is not.
    pub started_with: RestartOnly,
    /// Held by a reload from reading the file to swapping its result in:
    /// one at a time, so two triggers cannot swap in each other's reads.
    pub reloading: tokio::sync::Mutex<()>,
    /// Request body bytes held at once (`server.max_body_bytes_total`).
    pub body_budget: Arc<crate::body_budget::BodyBudget>,
    /// Plain answer bytes held at once (`server.max_answer_bytes_total`).
    pub answer_budget: Arc<AnswerBudget>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The settings a reload cannot change (see `reload`).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOnly {
    pub listen: std::net::SocketAddr,
    /// The cap in effect: a file that now names the default it ran with
    /// changes nothing.
    pub max_connections: usize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub client_send_buffer: Option<usize>,
}

impl RestartOnly {
    pub fn of(config: &Config) -> RestartOnly {
        RestartOnly {
            listen: config.server.listen,
            max_connections: config.effective_max_connections(),
            metrics_listen: config.server.metrics_listen,
            client_send_buffer: config.server.client_send_buffer,
        }
    }
}

/// The outcome of the last configuration reload, shown by `/readyz`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// `success` or `failure`; empty before the first reload.
    pub result: &'static str,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The fingerprint of the configuration in use after it.
    pub config: String,
    pub problems: Vec<String>,
}

impl AppState {
    /// State over the process environment.
    pub fn new(config: Config) -> Self {
        Self::with_env(config, Arc::new(|name: &str| std::env::var(name).ok()))
    }

    /// State whose reloads read `env` instead of the process environment.
    pub fn with_env(config: Config, env: EnvLookup) -> Self {
        let metrics = Arc::new(Metrics::new());
        metrics.prime_providers(config.providers.iter().map(|p| &*p.name));
        metrics
            .tokens_by_key
            .store(config.server.metrics_tokens_by_key, Ordering::Relaxed);
        config.limits.attach_metrics(&metrics.store);
        config.limits.start();
        let started_with = RestartOnly::of(&config);
        let answer_budget = Arc::new(AnswerBudget::new(config.server.max_answer_bytes_total));
        AppState(Arc::new(Shared {
            started_with,
            config: ArcSwap::from_pointee(config),
            drain: Arc::new(Drain::default()),
            reload: Mutex::new(ReloadStatus::default()),
            env,
            metrics,
            listen_override: std::sync::OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
            body_budget: Arc::default(),
            answer_budget,
        }))
    }

    /// The configuration a request runs on from start to end.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// A short look at the configuration (no reference count taken, so no
    /// cache line shared by every core): for middleware that reads it and
    /// lets go before the handler runs.
    pub fn peek_config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Swaps in a new configuration; requests in flight keep the old one.
    pub fn replace_config(&self, config: Config) {
        self.metrics
            .prime_providers(config.providers.iter().map(|p| &*p.name));
        self.metrics
            .tokens_by_key
            .store(config.server.metrics_tokens_by_key, Ordering::Relaxed);
        config.limits.attach_metrics(&self.metrics.store);
        config.limits.start();
        self.answer_budget
            .set_total(config.server.max_answer_bytes_total);
        let previous = self.config.swap(Arc::new(config));
        self.config.load().limits.took_over_from(&previous.limits);
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload.lock().expect("reload status lock").clone()
    }

    pub fn set_reload_status(&self, status: ReloadStatus) {
        *self.reload.lock().expect("reload status lock") = status;
    }
}
