//! The TOML file's shape: plain serde structs, every field optional so that a
//! file only says what differs from the built-in presets.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[server]`
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct ServerFile {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<u64>,
    /// Most request body bytes held at once, across every request.
    pub max_body_bytes_total: Option<u64>,
    /// Most request body bytes one client key's requests hold at once.
    pub max_body_bytes_per_key: Option<u64>,
    /// Most client connections open at once on the main listener.
    pub max_connections: Option<u64>,
    /// Largest plain answer, and largest single stream event, read from a
    /// provider, in bytes.
    pub max_response_bytes: Option<u64>,
    /// Most plain answer bytes held at once, across every request.
    pub max_answer_bytes_total: Option<u64>,
    /// The kernel's send buffer of each client connection, in bytes (0:
    /// the kernel's own, grown as it sees fit).
    pub client_send_buffer_bytes: Option<u64>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    pub drain_secs: Option<f64>,
    /// Interval of `: keep-alive` comments while a stream is silent (0: off).
    pub sse_keepalive_secs: Option<f64>,
    /// How long a client connection may wait for its next complete request
    /// head (idle keep-alive, or a head sent slowly) before it is closed
    /// (0: no limit).
    pub client_idle_secs: Option<f64>,
    /// Serve `/metrics` on this address instead of the main listener.
    pub metrics_listen: Option<String>,
    /// Token counters per client key (`key` label); off: one per route and
    /// provider.
    pub metrics_tokens_by_key: Option<bool>,
}

/// `[retry]`: attempts across a route's targets before the first byte.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct RetryFile {
    pub max_attempts: Option<u32>,
    pub deadline_secs: Option<f64>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub max_retry_after_secs: Option<f64>,
}

/// `[breaker]`: per-target circuit breaking.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct BreakerFile {
    pub consecutive_failures: Option<u32>,
    pub error_ratio: Option<f64>,
    pub window_secs: Option<f64>,
    pub min_requests: Option<u32>,
    pub cooldown_secs: Option<f64>,
    pub max_cooldown_secs: Option<f64>,
}

/// `[providers.NAME]`: a new provider, or changes to a preset of that name.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct ProviderFile {
    /// `false` removes a preset provider entirely.
    pub enabled: Option<bool>,
    /// Base URL of the OpenAI-compatible API, ending before `/chat/completions`.
    pub base_url: Option<String>,
    /// Environment variable that, when set, overrides `base_url`.
    pub base_url_env: Option<String>,
    /// Environment variable holding the provider's API key.
    pub api_key_env: Option<String>,
    /// Several keys of one provider (each becomes its own target); replaces
    /// `api_key_env` when given.
    pub api_key_envs: Option<Vec<String>>,
    /// The model ids this provider serves (replaces the preset's list).
    pub models: Option<Vec<String>>,
    /// Model ids added to the catalogue (preset or `models`).
    pub extra_models: Option<Vec<String>>,
    /// Extra headers sent with every request to this provider.
    pub headers: Option<BTreeMap<String, String>>,
    pub timeouts: Option<TimeoutsFile>,
    /// The kernel's receive buffer of each connection to this provider, in
    /// bytes (0: the kernel's own, grown as it sees fit).
    pub receive_buffer_bytes: Option<u64>,
    /// Send streams with `stream_options.include_usage` when the client
    /// did not ask, so that they report usage (the extra chunk is not
    /// passed on).
    pub ask_stream_usage: Option<bool>,
    /// Pass on a stream's opening chunks that carry only prompt filter
    /// results (Azure's shape, with no choice) instead of dropping them.
    pub pass_prompt_filter_chunks: Option<bool>,
    /// Ask the provider's `/models` this often and add the ids it lists
    /// (those matching `refresh_models_match`) to the catalogue (0: never).
    pub refresh_models_secs: Option<f64>,
    /// Substrings (any case) an id listed by `/models` must contain to be
    /// added; `[""]` takes every id.
    pub refresh_models_match: Option<Vec<String>>,
}

/// `[providers.NAME.timeouts]`, in seconds.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct TimeoutsFile {
    pub connect_secs: Option<f64>,
    pub first_byte_secs: Option<f64>,
    pub idle_secs: Option<f64>,
    pub total_secs: Option<f64>,
}

/// `[aliases.NAME]`: a client-facing model name and where it goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct AliasFile {
    pub targets: Vec<TargetFile>,
}

/// One `{ provider, model }` entry of an alias, tried in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct TargetFile {
    pub provider: String,
    pub model: String,
    /// Lower is tried first; default: the entry's position.
    pub priority: Option<u32>,
    /// Share of traffic among targets of equal priority (default 1).
    pub weight: Option<u32>,
}

/// `[keys.NAME]`: one client key. The secret never appears in the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct KeyFile {
    /// Environment variable holding the key.
    pub secret_env: Option<String>,
    /// The key's SHA-256, in hex.
    pub secret_sha256: Option<String>,
    /// Read only to refuse it with a clear problem: no plain-text secrets.
    pub secret: Option<toml::Value>,
    /// Route names the key may use; absent: all.
    pub models: Option<Vec<String>>,
    pub limits: Option<LimitSpecFile>,
    /// Limits of this key on one model, by route name.
    pub model_limits: Option<BTreeMap<String, LimitSpecFile>>,
}

/// The limits one scope can set; absent: unlimited.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(expecting = "a table")]
pub struct LimitSpecFile {
    pub requests_per_minute: Option<u64>,
    pub requests_per_day: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub tokens_per_day: Option<u64>,
    pub concurrent_requests: Option<u64>,
}

/// `[limits]`: where limits are counted, and the global and provider scopes.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(expecting = "a table")]
pub struct LimitsFile {
    /// `local` (default) or `redis`.
    pub backend: Option<String>,
    pub redis_url: Option<String>,
    /// Environment variable that, when set, overrides `redis_url`.
    pub redis_url_env: Option<String>,
    /// PEM file of the certificate authorities a `rediss://` Redis's
    /// certificate is checked against, instead of the built-in roots.
    pub redis_ca_file: Option<String>,
    /// `open` (default: local limits) or `closed` (503) while Redis is down.
    pub on_redis_error: Option<String>,
    pub redis_key_prefix: Option<String>,
    pub redis_timeout_ms: Option<u64>,
    pub redis_lease_secs: Option<f64>,
    pub provider_queue_ms: Option<u64>,
    pub default_max_tokens: Option<u64>,
    pub global: Option<LimitSpecFile>,
    pub providers: Option<BTreeMap<String, LimitSpecFile>>,
}
