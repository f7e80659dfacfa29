//! Rate limits: per client key, per key and model, per provider and for the
//! whole gateway. Each scope can limit requests (GCRA), tokens (an estimate
//! reserved at admission, settled to real usage when the response ends) and
//! concurrency (a slot held until the response body ends). Enforced in
//! process ([`local`]) or shared by every replica through Redis ([`redis`]).
//!
//! A request is admitted against its key's scopes and the global one before
//! it is routed ([`Limits::admit`]); each fail-over attempt is admitted
//! against its provider's scope ([`Limits::admit_provider`]), so a provider
//! at its cap sends the request on to the next target.

mod admission;
mod bucket;
pub mod headers;
pub mod local;
pub mod redis;
mod registry;
pub mod slots;
mod spec;

pub use admission::{Admission, Settlement, estimate_tokens};
pub use redis::{OnRedisError, RedisBackend, RedisSettings, StoreCheck, StoreMetrics};
pub use registry::ScopeRegistry;
pub use spec::{Denial, LimitKind, LimitSpec, Scope, ScopeKind, Snapshot, Window};

use foldhash::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Default `limits.provider_queue_ms`.
pub const DEFAULT_PROVIDER_QUEUE: Duration = Duration::from_millis(250);
/// Default `limits.default_max_tokens`: the completion estimate of a
/// request that sets no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

/// `[limits]` as validated, before scopes are built.
#[derive(Debug, Clone, Default)]
pub struct LimitSettings {
    pub global: LimitSpec,
    pub providers: Vec<(String, LimitSpec)>,
    pub provider_queue: Duration,
    pub default_max_tokens: u64,
    pub redis: Option<RedisSettings>,
}

/// Where limits are counted.
#[derive(Debug, Clone)]
pub enum Backend {
    Local,
    Redis(Arc<RedisBackend>),
}

/// Every scope of a configuration except the keys' own (those hang off
/// each [`crate::auth::ClientKey`], found with the key, no lookup).
#[derive(Debug)]
pub struct Limits {
    pub global: Option<Arc<Scope>>,
    pub providers: HashMap<Box<str>, Arc<Scope>>,
    pub provider_queue: Duration,
    pub default_max_tokens: u64,
    pub backend: Backend,
    /// Some key has limits of its own.
    keys_limited: bool,
    registry: ScopeRegistry,
}

impl Limits {
    /// Builds the scopes, taking over `previous`'s Redis connection when
    /// its settings are unchanged. `registry` already holds the keys' scopes.
    pub fn new(
        settings: LimitSettings,
        mut registry: ScopeRegistry,
        keys_limited: bool,
        previous: Option<&Limits>,
    ) -> Result<Limits, String> {
        let global = registry.scope(ScopeKind::Global, "", "", settings.global);
        let providers = settings
            .providers
            .iter()
            .filter_map(|(name, spec)| {
                let scope = registry.scope(ScopeKind::Provider, name, "", *spec)?;
                Some((name.as_str().into(), scope))
            })
            .collect();
        registry.drop_unclaimed();
        let backend = match settings.redis {
            None => Backend::Local,
            Some(redis) => match previous.map(|p| &p.backend) {
                Some(Backend::Redis(old)) if old.settings == redis => Backend::Redis(old.clone()),
                Some(Backend::Redis(old)) => {
                    Backend::Redis(Arc::new(RedisBackend::new(redis, Some(old))?))
                }
                _ => Backend::Redis(Arc::new(RedisBackend::new(redis, None)?)),
            },
        };
        Ok(Limits {
            global,
            providers,
            provider_queue: settings.provider_queue,
            default_max_tokens: settings.default_max_tokens,
            backend,
            keys_limited,
            registry,
        })
    }

    /// No limits at all: no keys with limits, no global, no provider scope.
    /// Requests then skip every limit step.
    pub fn is_off(&self) -> bool {
        !self.keys_limited && self.global.is_none() && self.providers.is_empty()
    }

    /// The state to hand to the next configuration.
    pub fn registry(&self) -> &ScopeRegistry {
        &self.registry
    }

    /// For `/readyz`: the backend and, for Redis, its health (asking
    /// starts the connection, so a replica connects before its first
    /// request when probed) and the gateway's outages so far.
    pub fn status(&self, store: &StoreMetrics) -> serde_json::Value {
        match &self.backend {
            Backend::Local => serde_json::json!({"backend": "local", "healthy": true}),
            Backend::Redis(redis) => {
                redis.start();
                serde_json::json!({
                    "backend": "redis",
                    "healthy": redis.is_healthy(),
                    "on_redis_error": redis.settings.on_error.as_str(),
                    "outages": store.outages(),
                })
            }
        }
    }

    /// Has a Redis backend report to `metrics` (see
    /// [`RedisBackend::attach_metrics`]).
    pub fn attach_metrics(&self, metrics: &StoreMetrics) {
        if let Backend::Redis(redis) = &self.backend {
            redis.attach_metrics(metrics);
        }
    }

    /// Starts a Redis backend's connection (and health checks) now, not
    /// at the first request, so an unreachable Redis shows at start.
    pub fn start(&self) {
        if let Backend::Redis(redis) = &self.backend {
            redis.start();
        }
    }

    /// `self` has replaced `previous`: a Redis backend `previous` used and
    /// this one does not stops reporting the store's health.
    pub fn took_over_from(&self, previous: &Limits) {
        if let Backend::Redis(old) = &previous.backend {
            let kept = matches!(&self.backend, Backend::Redis(new) if Arc::ptr_eq(new, old));
            if !kept {
                old.retire();
            }
            if let Backend::Redis(new) = &self.backend
                && !kept
            {
                new.carries_on_from(old);
            }
        }
    }

    /// A reload's check of a new Redis backend (see
    /// [`RedisBackend::check`]), before the reload takes it.
    pub async fn check_store(&self) -> StoreCheck {
        match &self.backend {
            Backend::Redis(redis) => redis.check().await,
            Backend::Local => StoreCheck::NotRefused {
                left: Duration::ZERO,
                failure: None,
            },
        }
    }

    /// Connects a Redis backend the way its check says (see
    /// [`RedisBackend::connect_after`]).
    pub async fn connect_after(&self, check: StoreCheck) {
        if let Backend::Redis(redis) = &self.backend {
            redis.connect_after(check).await;
        }
    }

    /// For the metrics: whether Redis answers, when limits are counted
    /// there.
    pub fn store_up(&self) -> Option<bool> {
        match &self.backend {
            Backend::Local => None,
            Backend::Redis(redis) => Some(redis.is_healthy()),
        }
    }

    /// Whether the limits let requests through at all (fail-closed Redis
    /// that is down does not).
    pub fn is_ready(&self) -> bool {
        match &self.backend {
            Backend::Local => true,
            Backend::Redis(redis) => {
                redis.is_healthy() || redis.settings.on_error == OnRedisError::Open
            }
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(
            LimitSettings {
                provider_queue: DEFAULT_PROVIDER_QUEUE,
                default_max_tokens: DEFAULT_MAX_TOKENS,
                ..LimitSettings::default()
            },
            ScopeRegistry::default(),
            false,
            None,
        )
        .expect("no Redis, nothing to fail")
    }
}
