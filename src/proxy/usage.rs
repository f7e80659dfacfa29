//! Token usage as the providers report it: OpenAI's top-level `usage` (also
//! the `choices: []` chunk of `stream_options.include_usage`) or Moonshot's
//! `usage` inside `choices[0]` of the last chunk, with cached prompt tokens
//! under either name.

use serde::Deserialize;
use std::sync::LazyLock;

static USAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

/// Token counts of one completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
}

/// Where a stream's usage was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsagePlace {
    /// A top-level `usage` (OpenAI style, including the `choices: []` chunk).
    TopLevel,
    /// Inside `choices[0]` (Moonshot style).
    InChoice,
}

#[derive(Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    cached_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<Details>,
}

#[derive(Deserialize)]
struct Details {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Envelope {
    usage: Option<RawUsage>,
    #[serde(default)]
    choices: Vec<ChoiceUsage>,
}

#[derive(Deserialize)]
struct ChoiceUsage {
    usage: Option<RawUsage>,
}

impl From<RawUsage> for Usage {
    fn from(raw: RawUsage) -> Self {
        let cached = raw
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(raw.cached_tokens)
            .unwrap_or(0);
        Usage {
            prompt_tokens: raw.prompt_tokens,
            completion_tokens: raw.completion_tokens,
            total_tokens: raw.total_tokens,
            cached_tokens: cached,
        }
    }
}

/// Cheap test: could this data mention usage at all?
pub fn mentions_usage(data: &[u8]) -> bool {
    USAGE_KEY.find(data).is_some()
}

/// Usage from a complete JSON document (a non-stream body or one event's data).
pub fn parse_usage(json: &[u8]) -> Option<(Usage, UsagePlace)> {
    let envelope: Envelope = serde_json::from_slice(json).ok()?;
    if let Some(raw) = envelope.usage {
        return Some((raw.into(), UsagePlace::TopLevel));
    }
    envelope
        .choices
        .into_iter()
        .find_map(|c| c.usage)
        .map(|raw| (raw.into(), UsagePlace::InChoice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_openai_usage() {
        let (u, place) = parse_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(place, UsagePlace::TopLevel);
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens
            ),
            (3, 4, 7, 2)
        );
    }

    #[test]
    fn moonshot_usage_in_choice() {
        let (u, place) = parse_usage(
            br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11,"cached_tokens":1}}]}"#,
        )
        .unwrap();
        assert_eq!(place, UsagePlace::InChoice);
        assert_eq!(u.cached_tokens, 1);
        assert_eq!(u.total_tokens, 11);
    }

    #[test]
    fn no_usage() {
        assert!(parse_usage(br#"{"choices":[{"delta":{"content":"hi"}}]}"#).is_none());
        assert!(!mentions_usage(b"data: {\"choices\":[]}"));
    }
}
