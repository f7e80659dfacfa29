//! Built-in presets for the three providers: base URLs, key variables and the
//! model catalogues their documentation lists. A config file can change any of it.

/// A provider as the gateway knows it before any file or environment applies.
pub struct Preset {
    pub name: &'static str,
    pub base_url: &'static str,
    pub base_url_env: &'static str,
    pub api_key_env: &'static str,
    pub models: &'static [&'static str],
    /// Whether a stream is sent with `stream_options.include_usage` when
    /// the client did not ask (see `ProviderFile::ask_stream_usage`).
    pub ask_stream_usage: bool,
}

/// In this order: it is also the default order for a model several providers
/// serve (the model's maker first, then the resellers).
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "moonshot",
        base_url: "https://api.moonshot.ai/v1",
        base_url_env: "MOONSHOT_BASE_URL",
        api_key_env: "MOONSHOT_API_KEY",
        // Usage comes in the last chunk's choice unasked.
        ask_stream_usage: false,
        models: &[
            "kimi-k2.6",
            "kimi-k2.5",
            "kimi-k2-turbo-preview",
            "kimi-k2-0905-preview",
            "kimi-k2-0711-preview",
            "kimi-k2-thinking",
            "kimi-k2-thinking-turbo",
            "kimi-latest",
            "moonshot-v1-8k",
            "moonshot-v1-32k",
            "moonshot-v1-128k",
            "moonshot-v1-auto",
            "moonshot-v1-8k-vision-preview",
            "moonshot-v1-32k-vision-preview",
            "moonshot-v1-128k-vision-preview",
        ],
    },
    Preset {
        name: "aimlapi",
        base_url: "https://api.aimlapi.com/v1",
        base_url_env: "AIMLAPI_BASE_URL",
        api_key_env: "AIMLAPI_API_KEY",
        // Its API reference documents `stream_options.include_usage`.
        ask_stream_usage: true,
        models: &[
            "moonshot/kimi-k2-preview",
            "moonshot/kimi-k2-0905-preview",
            "moonshot/kimi-k2-5",
            "moonshot/kimi-k2-6",
        ],
    },
    Preset {
        name: "agentsflare",
        base_url: "https://api.agentsflare.com/v1",
        base_url_env: "AGENTSFLARE_BASE_URL",
        api_key_env: "AGENTSFLARE_API_KEY",
        // Its documentation says nothing of `stream_options`.
        ask_stream_usage: false,
        models: &[
            "kimi-chat",
            "kimi-k2.7-code",
            "kimi-k2.7-code-highspeed",
            "kimi-k2.6",
            "kimi-k2.5",
            "kimi-latest",
        ],
    },
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}
