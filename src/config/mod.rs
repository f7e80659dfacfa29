//! Configuration: built-in presets, an optional TOML file and environment
//! variables, validated whole into one immutable [`Config`] snapshot.

mod aliases;
mod base_url;
pub mod bounded_file;
mod discovered;
mod env_name;
mod env_read;
mod file;
mod key_exposure;
mod keys;
mod limit_notes;
mod limits;
pub mod model_id;
mod parse;
pub mod presets;
mod providers;
mod redundant_settings;
mod resolve;
mod server_settings;
mod service_notes;
mod settings;

use crate::auth::KeyTable;
use crate::limits::Limits;
use crate::proxy::breaker::BreakerRegistry;
use crate::proxy::failover::RetrySettings;
use crate::proxy::route::RouteTable;
use http::{HeaderMap, HeaderValue};
pub use server_settings::ServerSettings;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use discovered::DiscoveredModels;
pub use resolve::{resolve, resolve_reusing};
pub use service_notes::{KeyNote, OutOfService};

/// The first provider of the built-in configuration, every provider key
/// set to `secret-key-123` (unit tests of what meets a provider).
#[cfg(test)]
pub fn test_provider() -> Arc<Provider> {
    test_provider_with("")
}

/// The first provider of the built-in configuration with `toml` applied,
/// every provider key set to `secret-key-123`.
#[cfg(test)]
pub fn test_provider_with(toml: &str) -> Arc<Provider> {
    let config = resolve(toml, &|v| {
        v.ends_with("_API_KEY")
            .then(|| "secret-key-123".to_string())
    })
    .unwrap();
    config.providers[0].clone()
}

/// Ids a catalogue refresh adds to one provider's catalogue at most (the
/// first its `refresh_models_match` picks): each is a route and a metric
/// label.
pub const MAX_FOUND_MODELS: usize = 2_000;

/// Longest provider or client key name: each is in every access line (and
/// a provider's in metric labels).
pub const MAX_NAME_BYTES: usize = 64;

/// Default listen address when neither the file nor `--listen` says.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default request body limit: 32 MiB (vision requests carry base64 images).
pub const DEFAULT_MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Default total of request body bytes held at once: eight bodies at the
/// default limit.
pub const DEFAULT_MAX_BODY_BYTES_TOTAL: usize = 256 * 1024 * 1024;
/// Largest plain answer or single stream event read from a provider.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Default total of plain answer bytes held at once: four answers at the
/// default limit.
pub const DEFAULT_MAX_ANSWER_BYTES_TOTAL: usize = 256 * 1024 * 1024;
/// The kernel send buffer asked for each client connection: what a client
/// that stops reading can have queued in the kernel is about twice it.
pub const DEFAULT_CLIENT_SEND_BUFFER_BYTES: usize = 256 * 1024;
/// The kernel receive buffer asked for each provider connection: what a
/// provider the gateway stops reading can have queued is about twice it.
pub const DEFAULT_PROVIDER_RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

/// One problem found in the configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigProblem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else if self.path.contains(char::is_control) {
            // A table name may hold a line break (`[keys."a\nb"]`): escaped,
            // so that each problem stays on its own line.
            write!(f, "{}: {}", self.path.escape_debug(), self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem of a configuration that could not be used.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for problem in &self.0 {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The live configuration: built once, shared read-only by every request.
pub struct Config {
    /// The `[server]` table: listeners, body and answer limits, waits.
    pub server: ServerSettings,
    pub retry: RetrySettings,
    pub providers: Vec<Arc<Provider>>,
    pub routes: RouteTable,
    pub breakers: BreakerRegistry,
    /// Client keys; empty: the gateway is open.
    pub keys: KeyTable,
    /// Every limit scope, and where limits are counted.
    pub limits: Limits,
    /// The file this configuration was read from, if any (for reloads).
    pub source: Option<std::path::PathBuf>,
    /// The text it was built from: a catalogue refresh rebuilds from this,
    /// not from the file, which may be caught part-way through a write.
    pub source_text: Arc<str>,
    /// Short hash of the inputs, shown by `/readyz` to tell configs apart.
    pub fingerprint: String,
    /// What the providers' `/models` listed; shared by every configuration
    /// built after this one.
    pub discovered: Arc<DiscoveredModels>,
    /// What is valid but most likely a mistake: limits that can never
    /// refuse anything (see `limit_notes`), settings that do nothing where
    /// they are (see `redundant_settings`), what serves nothing (see
    /// `service_notes`), keys sent or shown where they should not be (see
    /// `key_exposure`). Noted by `--check` and in the log, not refused.
    pub notes: Vec<ConfigProblem>,
}

impl Config {
    /// Providers that have a key and so can serve requests.
    pub fn usable_providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.iter().filter(|p| p.is_usable())
    }

    /// `server.max_connections`, or the default the open-file limit sets.
    pub fn effective_max_connections(&self) -> usize {
        self.server
            .max_connections
            .unwrap_or_else(crate::fd_limit::default_max_connections)
    }
}

/// A provider's key: kept out of `Debug` so it can never be logged by accident.
#[derive(Clone)]
pub struct ApiKey {
    /// The environment variable the key came from, for operators' logs.
    pub env: String,
    pub secret: String,
    /// `Bearer <secret>`, marked sensitive so `http`'s `Debug` never shows it.
    pub header: HeaderValue,
    /// The request line and the header lines every chat request with this
    /// key starts with, encoded once (it holds the key: never logged).
    pub request_head: bytes::Bytes,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Per-provider timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up.
    pub connect: Duration,
    /// Streams: until the response head and the first event have arrived.
    pub first_byte: Duration,
    /// Streams: longest silence between two events (thinking models pause).
    pub idle: Duration,
    /// Non-stream requests: the whole exchange.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(120),
            idle: Duration::from_secs(300),
            total: Duration::from_secs(600),
        }
    }
}

/// One upstream provider, resolved.
#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    /// `name` as a header value, for `x-gateway-provider`.
    pub name_header: http::HeaderValue,
    pub base_url: String,
    /// `{base_url}/chat/completions`, split once for the client.
    pub chat_url: ChatUrl,
    /// The key variables, in order; `api_key_env` names them for messages.
    pub key_envs: Vec<String>,
    pub api_key_env: String,
    /// The keys that are set, in the order of `key_envs`.
    pub keys: Vec<ApiKey>,
    /// The configured catalogue, then the ids its `/models` listed.
    pub models: Vec<String>,
    /// How many of `models` the configuration names (the rest were
    /// discovered by the catalogue refresh).
    pub configured_models: usize,
    pub headers: HeaderMap,
    pub timeouts: Timeouts,
    /// Streams are sent with `stream_options.include_usage` when the
    /// client did not ask.
    pub ask_stream_usage: bool,
    /// A stream's opening prompt-filter chunks are passed on (by default
    /// they are dropped: OpenAI's streams never begin without a choice).
    pub pass_prompt_filter_chunks: bool,
    /// When set, the provider's `/models` is asked for more catalogue ids.
    pub models_refresh: Option<ModelsRefresh>,
    /// Keep-alive connections to `chat_url.origin`.
    pub client: crate::client::Client,
}

/// A provider's catalogue refresh: how often its `/models` is asked, and
/// which of the ids it lists join the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsRefresh {
    pub every: Duration,
    /// Lowercase substrings; an id containing any of them is taken.
    pub matches: Vec<String>,
}

impl ModelsRefresh {
    /// The ids that `refresh_models_match` picks are taken.
    pub fn takes(&self, id: &str) -> bool {
        let id = id.to_ascii_lowercase();
        self.matches.iter().any(|m| id.contains(m.as_str()))
    }
}

/// Where chat completions go: the origin the client connects to, the
/// request target and the `Host` header.
#[derive(Debug, Clone)]
pub struct ChatUrl {
    pub origin: http::Uri,
    /// Origin-form (`/v1/chat/completions`).
    pub path: http::Uri,
    pub host: http::HeaderValue,
}

impl std::fmt::Display for ChatUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let origin = self.origin.to_string();
        write!(f, "{}{}", origin.trim_end_matches('/'), self.path)
    }
}

impl Provider {
    pub fn is_usable(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key variables it names that are not set (or blank), when others
    /// are: the provider is served with fewer keys than configured.
    pub fn unset_key_envs(&self) -> Vec<&str> {
        if !self.is_usable() {
            return Vec::new();
        }
        self.key_envs
            .iter()
            .filter(|var| !self.keys.iter().any(|key| key.env == **var))
            .map(String::as_str)
            .collect()
    }
}

/// The `server.listen` a configuration file gives, `None` when it gives
/// none (for the `healthcheck` subcommand, which probes the gateway the
/// same file configures without needing its environment). A file that
/// cannot be read, or a `server.listen` that is no address, is an error:
/// probing the default address instead could find another gateway.
pub fn listen_in_file(path: &Path) -> Result<Option<SocketAddr>, String> {
    let shown = path.display();
    let text = bounded_file::read_text(path, bounded_file::MAX_CONFIG_BYTES)
        .map_err(|err| format!("{shown}: {err}"))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|_| format!("{shown}: not valid TOML (see kimi-gateway --check)"))?;
    let Some(listen) = table.get("server").and_then(|server| server.get("listen")) else {
        return Ok(None);
    };
    listen
        .as_str()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("{shown}: server.listen is not an address such as 127.0.0.1:8080"))
}

/// Reads the file (if any) and the process environment into a [`Config`].
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    load_reusing(path, None, &|name| std::env::var(name).ok())
}

/// Checks the address `--listen` (or `KIMI_GATEWAY_LISTEN`) gives in place
/// of `server.listen` against `server.metrics_listen`, as the file's own
/// `server.listen` is: otherwise the clash would show only at start, as a
/// bind error that sends its reader looking for another process.
pub fn check_listen_override(
    config: &Config,
    listen: Option<std::net::SocketAddr>,
) -> Result<(), ConfigErrors> {
    match (listen, config.server.metrics_listen) {
        (Some(listen), Some(metrics)) if server_settings::shares_port(metrics, listen) => {
            Err(ConfigErrors(vec![ConfigProblem::new(
                "server.metrics_listen",
                format!(
                    "{metrics} takes the port of --listen / KIMI_GATEWAY_LISTEN ({listen}): give one of them a port of its own"
                ),
            )]))
        }
        _ => Ok(()),
    }
}

/// Like [`load`], keeping the breaker state of `previous`'s unchanged
/// targets and reading the environment through `env`.
pub fn load_reusing(
    path: Option<&Path>,
    previous: Option<&Config>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let text = match path {
        Some(path) => {
            bounded_file::read_text(path, bounded_file::MAX_CONFIG_BYTES).map_err(|err| {
                ConfigErrors(vec![ConfigProblem::new(
                    "",
                    format!("cannot read {}: {err}", path.display()),
                )])
            })?
        }
        None => String::new(),
    };
    let mut config = resolve_reusing(&text, env, previous)?;
    config.source = path.map(Path::to_path_buf);
    Ok(config)
}

/// `running` built again from the text it was built from, with the
/// environment read through `env` and the models the catalogue refresh
/// has found since: the file is not read (its changes are a reload's).
pub fn rebuild(
    running: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut config = resolve_reusing(&running.source_text, env, Some(running))?;
    config.source = running.source.clone();
    Ok(config)
}
