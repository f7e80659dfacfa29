//! Token usage as the providers report it: OpenAI's top-level `usage` (also
//! the `choices: []` chunk of `stream_options.include_usage`) or Moonshot's
//! `usage` inside `choices[0]` of the last chunk, with cached prompt tokens
//! under either name.

use serde::Deserialize;
use serde_json::Value;
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
    /// Inside a choice (Moonshot style).
    InChoice,
}

/// A usage report and the document it came from.
#[derive(Debug, Clone)]
pub struct UsageReport {
    pub usage: Usage,
    pub place: UsagePlace,
    /// The `usage` object as sent.
    pub raw: Value,
    pub id: Option<Value>,
    pub created: Option<Value>,
    pub model: Option<Value>,
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<Value>,
    created: Option<Value>,
    model: Option<Value>,
    usage: Option<Value>,
    #[serde(default)]
    choices: Vec<ChoiceUsage>,
}

#[derive(Deserialize)]
struct ChoiceUsage {
    usage: Option<Value>,
}

impl Usage {
    fn from_value(raw: &Value) -> Usage {
        let count = |v: &Value| v.as_u64().unwrap_or(0);
        let cached = raw["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .or(raw["cached_tokens"].as_u64())
            .unwrap_or(0);
        Usage {
            prompt_tokens: count(&raw["prompt_tokens"]),
            completion_tokens: count(&raw["completion_tokens"]),
            total_tokens: count(&raw["total_tokens"]),
            cached_tokens: cached,
        }
    }
}

/// Usage from a non-stream body: only the top-level `usage` value is
/// parsed, located by a scan (the choices, maybe long, are not decoded).
pub fn parse_body_usage(body: &[u8]) -> Option<Usage> {
    if !mentions_usage(body) {
        return None;
    }
    let mut span = None;
    super::json_scan::scan_object(body, |key, value| {
        if key == b"usage" {
            span = Some(value);
        }
    })
    .ok()?;
    let raw: Value = serde_json::from_slice(&body[span?]).ok()?;
    raw.is_object().then(|| Usage::from_value(&raw))
}

/// Cheap test: could this data mention usage at all?
pub fn mentions_usage(data: &[u8]) -> bool {
    USAGE_KEY.find(data).is_some()
}

/// Usage from a complete JSON document (a non-stream body or one event's data).
pub fn parse_usage(json: &[u8]) -> Option<UsageReport> {
    let envelope: Envelope = serde_json::from_slice(json).ok()?;
    let (raw, place) = match envelope.usage.filter(Value::is_object) {
        Some(raw) => (raw, UsagePlace::TopLevel),
        None => (
            envelope
                .choices
                .into_iter()
                .find_map(|c| c.usage.filter(Value::is_object))?,
            UsagePlace::InChoice,
        ),
    };
    Some(UsageReport {
        usage: Usage::from_value(&raw),
        place,
        raw,
        id: envelope.id,
        created: envelope.created,
        model: envelope.model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_openai_usage() {
        let report = parse_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":2}}}"#,
        )
        .unwrap();
        let u = report.usage;
        assert_eq!(report.place, UsagePlace::TopLevel);
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
        let report = parse_usage(
            br#"{"id":"c1","model":"kimi","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11,"cached_tokens":1}}]}"#,
        )
        .unwrap();
        assert_eq!(report.place, UsagePlace::InChoice);
        assert_eq!(report.usage.cached_tokens, 1);
        assert_eq!(report.usage.total_tokens, 11);
        assert_eq!(report.id, Some(Value::from("c1")));
    }

    #[test]
    fn body_usage_reads_only_the_usage_value() {
        let body = br#"{"choices":[{"message":{"content":"the word \"usage\" here"}}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5,"cached_tokens":1}}"#;
        let usage = parse_body_usage(body).unwrap();
        assert_eq!((usage.total_tokens, usage.cached_tokens), (5, 1));
        assert!(parse_body_usage(br#"{"choices":[]}"#).is_none());
    }

    #[test]
    fn no_usage() {
        assert!(parse_usage(br#"{"choices":[{"delta":{"content":"hi"}}]}"#).is_none());
        assert!(parse_usage(br#"{"choices":[],"usage":null}"#).is_none());
        assert!(!mentions_usage(b"data: {\"choices\":[]}"));
    }
}
