//! The TOML file's shape: plain serde structs, every field optional so that a
//! file only says what differs from the built-in presets.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `[server]`
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ServerFile {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<u64>,
}

/// `[providers.NAME]`: a new provider, or changes to a preset of that name.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ProviderFile {
    /// `false` removes a preset provider entirely.
    pub enabled: Option<bool>,
    /// Base URL of the OpenAI-compatible API, ending before `/chat/completions`.
    pub base_url: Option<String>,
    /// Environment variable that, when set, overrides `base_url`.
    pub base_url_env: Option<String>,
    /// Environment variable holding the provider's API key.
    pub api_key_env: Option<String>,
    /// The model ids this provider serves (replaces the preset's list).
    pub models: Option<Vec<String>>,
    /// Model ids added to the catalogue (preset or `models`).
    pub extra_models: Option<Vec<String>>,
    /// Extra headers sent with every request to this provider.
    pub headers: Option<BTreeMap<String, String>>,
    pub timeouts: Option<TimeoutsFile>,
}

/// `[providers.NAME.timeouts]`, in seconds.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct TimeoutsFile {
    pub connect_secs: Option<f64>,
    pub first_byte_secs: Option<f64>,
    pub idle_secs: Option<f64>,
    pub total_secs: Option<f64>,
}

/// `[aliases.NAME]`: a client-facing model name and where it goes.
#[derive(Debug, Clone, Deserialize)]
pub struct AliasFile {
    pub targets: Vec<TargetFile>,
}

/// One `{ provider, model }` entry of an alias, tried in order.
#[derive(Debug, Clone, Deserialize)]
pub struct TargetFile {
    pub provider: String,
    pub model: String,
}
