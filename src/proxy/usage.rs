//! Token usage as the providers report it: OpenAI's top-level `usage` (also
//! the `choices: []` chunk of `stream_options.include_usage`) or Moonshot's
//! `usage` inside `choices[0]` of the last chunk, with cached prompt tokens
//! under either name.

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::ops::Range;
use std::sync::LazyLock;

static USAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
static USAGE_KEY_FROM_END: LazyLock<memchr::memmem::FinderRev<'static>> =
    LazyLock::new(|| memchr::memmem::FinderRev::new(b"\"usage\""));

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
    pub raw: Box<RawValue>,
    pub id: Option<Box<RawValue>>,
    pub created: Option<Box<RawValue>>,
    pub model: Option<Box<RawValue>>,
}

/// One event's members that matter here, borrowed from the event's bytes:
/// the rest (the delta, maybe long) is skipped, not decoded.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    created: Option<&'a RawValue>,
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    choices: Vec<ChoiceUsage<'a>>,
}

#[derive(Deserialize)]
struct ChoiceUsage<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

/// A JSON object (not `null` or another kind of value).
fn is_object(raw: &&RawValue) -> bool {
    raw.get().starts_with('{')
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

/// The top-level `usage` of a non-stream body.
#[derive(Debug, Clone)]
pub struct BodyUsage {
    pub usage: Usage,
    /// Where the usage object sits in the body.
    pub span: Range<usize>,
    /// Moonshot's `cached_tokens`, when no `prompt_tokens_details` is beside it.
    pub unmirrored_cached: Option<u64>,
}

/// The usage fields, read without building a JSON tree.
#[derive(Deserialize)]
struct UsageFields {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    prompt_tokens_details: Option<DetailsFields>,
}

#[derive(Deserialize)]
struct DetailsFields {
    cached_tokens: Option<u64>,
}

/// Usage from a non-stream body: only the top-level `usage` value is
/// parsed, located by a scan (the choices, maybe long, are not decoded).
pub fn find_body_usage(body: &[u8]) -> Option<BodyUsage> {
    if !mentions_usage(body) {
        return None;
    }
    if let Some(found) = usage_at_the_end(body) {
        return Some(found);
    }
    let mut span = None;
    super::json_scan::scan_object(body, |key, value| {
        if key == b"usage" {
            span = Some(value);
        }
    })
    .ok()?;
    let span = span?;
    let raw = &body[span.clone()];
    let (usage, moonshot_cached) = match serde_json::from_slice::<UsageFields>(raw) {
        Ok(fields) => fields.read(),
        // Unusual values (floats, nulls in odd places): the lenient way.
        Err(_) => {
            let value: Value = serde_json::from_slice(raw).ok()?;
            value.is_object().then_some(())?;
            (Usage::from_value(&value), value["cached_tokens"].as_u64())
        }
    };
    Some(BodyUsage::new(body, span, usage, moonshot_cached))
}

/// The common shape, found from the end without scanning the choices:
/// `"usage": {…}` as the body's last member (`{…}` parsed on its own, then
/// only `}` and whitespace). The last `"usage"` key followed by the object
/// that closes the document is the top-level one.
fn usage_at_the_end(body: &[u8]) -> Option<BodyUsage> {
    let key = USAGE_KEY_FROM_END.rfind(body)?;
    let after_key = &body[key + 7..];
    let colon = after_key.iter().position(|b| !b.is_ascii_whitespace())?;
    if after_key[colon] != b':' {
        return None;
    }
    let value_start = key + 7 + colon + 1;
    let value_start = value_start
        + body[value_start..]
            .iter()
            .position(|b| !b.is_ascii_whitespace())?;
    let trimmed = body.trim_ascii_end();
    let document_end = trimmed.len().checked_sub(1)?;
    if body.get(value_start) != Some(&b'{') || trimmed[document_end] != b'}' {
        return None;
    }
    let value_end = body[..document_end].trim_ascii_end().len();
    if value_end <= value_start || body[value_end - 1] != b'}' {
        return None;
    }
    let span = value_start..value_end;
    let (usage, moonshot_cached) = serde_json::from_slice::<UsageFields>(&body[span.clone()])
        .ok()?
        .read();
    Some(BodyUsage::new(body, span, usage, moonshot_cached))
}

impl UsageFields {
    /// The counts, and Moonshot's top-level `cached_tokens` if present.
    fn read(self) -> (Usage, Option<u64>) {
        let details_cached = self.prompt_tokens_details.and_then(|d| d.cached_tokens);
        let usage = Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens.unwrap_or(0),
            cached_tokens: details_cached.or(self.cached_tokens).unwrap_or(0),
        };
        (usage, self.cached_tokens)
    }
}

impl BodyUsage {
    fn new(body: &[u8], span: Range<usize>, usage: Usage, moonshot_cached: Option<u64>) -> Self {
        static DETAILS_KEY: LazyLock<memchr::memmem::Finder<'static>> =
            LazyLock::new(|| memchr::memmem::Finder::new(b"\"prompt_tokens_details\""));
        let has_details = DETAILS_KEY.find(&body[span.clone()]).is_some();
        BodyUsage {
            usage,
            span,
            unmirrored_cached: moonshot_cached.filter(|_| !has_details),
        }
    }
}

/// Cheap test: could this data mention usage at all?
pub fn mentions_usage(data: &[u8]) -> bool {
    USAGE_KEY.find(data).is_some()
}

/// The lines of `events` that mention usage, found with the same search as
/// [`mentions_usage`]: a read of many events costs one scan, not one per line.
pub fn lines_mentioning_usage(events: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + USAGE_KEY.find(&events[from..])?;
        let start = memchr::memrchr(b'\n', &events[from..at]).map_or(from, |i| from + i + 1);
        let end = memchr::memchr(b'\n', &events[at..]).map_or(events.len(), |i| at + i);
        from = end;
        Some(&events[start..end])
    })
}

/// Usage from a complete JSON document (a non-stream body or one event's data).
pub fn parse_usage(json: &[u8]) -> Option<UsageReport> {
    let envelope: Envelope = serde_json::from_slice(json).ok()?;
    let (raw, place) = match envelope.usage.filter(is_object) {
        Some(raw) => (raw, UsagePlace::TopLevel),
        None => (
            envelope
                .choices
                .into_iter()
                .find_map(|c| c.usage.filter(is_object))?,
            UsagePlace::InChoice,
        ),
    };
    let usage = match serde_json::from_str::<UsageFields>(raw.get()) {
        Ok(fields) => fields.read().0,
        // Unusual values (floats, nulls in odd places): the lenient way.
        Err(_) => Usage::from_value(&serde_json::from_str(raw.get()).ok()?),
    };
    Some(UsageReport {
        usage,
        place,
        raw: raw.to_owned(),
        id: envelope.id.map(RawValue::to_owned),
        created: envelope.created.map(RawValue::to_owned),
        model: envelope.model.map(RawValue::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_mentioning_usage_are_found_whole() {
        let events = b"data: {\"a\":1}\n\ndata: {\"usage\":null}\n\ndata: {\"b\":2}\n\
                       data: {\"usage\":{},\"x\":{\"usage\":1}}\n\ndata: [DONE]\n\ndata: {\"usage\":2}";
        let lines: Vec<&[u8]> = lines_mentioning_usage(events).collect();
        assert_eq!(
            lines,
            [
                &b"data: {\"usage\":null}"[..],
                b"data: {\"usage\":{},\"x\":{\"usage\":1}}",
                b"data: {\"usage\":2}",
            ]
        );
        assert_eq!(lines_mentioning_usage(b"data: {}\n\n").count(), 0);
        assert_eq!(
            lines_mentioning_usage(b"\"usage\"").collect::<Vec<_>>(),
            [&b"\"usage\""[..]]
        );
    }

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
        assert_eq!(report.id.as_deref().map(RawValue::get), Some("\"c1\""));
        assert_eq!(report.model.as_deref().map(RawValue::get), Some("\"kimi\""));
        assert!(report.created.is_none());
    }

    #[test]
    fn usage_null_or_odd_values() {
        // `usage: null` beside a choice's usage (OpenAI-style chunks carry
        // `"usage": null` until the last one).
        let report = parse_usage(
            br#"{"usage":null,"choices":[{"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}]}"#,
        )
        .unwrap();
        assert_eq!(report.place, UsagePlace::InChoice);
        assert_eq!(report.usage.total_tokens, 3);
        assert!(parse_usage(br#"{"usage":null,"choices":[{"delta":{}}]}"#).is_none());
        // A float where a count is expected is read leniently, not dropped.
        let report = parse_usage(
            br#"{"choices":[],"usage":{"prompt_tokens":2.0,"completion_tokens":1,"total_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(
            (report.usage.prompt_tokens, report.usage.completion_tokens),
            (0, 1)
        );
        // Escapes inside skipped members do not matter.
        let report = parse_usage(
            br#"{"id":"a\"b","choices":[{"delta":{"content":"\u00e9\n"}}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}"#,
        )
        .unwrap();
        assert_eq!(report.usage.total_tokens, 9);
        assert_eq!(report.id.as_deref().map(RawValue::get), Some(r#""a\"b""#));
    }

    #[test]
    fn body_usage_reads_only_the_usage_value() {
        let body = br#"{"choices":[{"message":{"content":"the word \"usage\" here"}}],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5,"cached_tokens":1}}"#;
        let found = find_body_usage(body).unwrap();
        assert_eq!(
            (found.usage.total_tokens, found.usage.cached_tokens),
            (5, 1)
        );
        assert_eq!(found.unmirrored_cached, Some(1));
        assert_eq!(
            &body[found.span],
            &br#"{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5,"cached_tokens":1}"#[..]
        );
        assert!(find_body_usage(br#"{"choices":[]}"#).is_none());
        // Usage last (found from the end) or not last (found by the scan):
        // the same answer, and only the top-level object counts.
        for body in [
            &br#"{"id":"x","usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}"#[..],
            br#"{"id":"x","usage" : {"prompt_tokens":2,"completion_tokens":3,"total_tokens":5} }  "#,
            br#"{"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5},"id":"x"}"#,
            br#"{"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5},"x":{"usage":{"total_tokens":9}}}"#,
        ] {
            let found = find_body_usage(body).unwrap();
            assert_eq!(found.usage.total_tokens, 5, "{}", String::from_utf8_lossy(body));
            assert!(body[found.span].starts_with(b"{\"prompt_tokens\":2"));
        }
        assert!(find_body_usage(br#"{"choices":[{"usage":{"total_tokens":9}}]}"#).is_none());
        // Odd values still count what can be counted.
        let odd = find_body_usage(
            br#"{"usage":{"prompt_tokens":2.0,"completion_tokens":3,"total_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(
            (odd.usage.prompt_tokens, odd.usage.completion_tokens),
            (0, 3)
        );
    }

    #[test]
    fn no_usage() {
        assert!(parse_usage(br#"{"choices":[{"delta":{"content":"hi"}}]}"#).is_none());
        assert!(parse_usage(br#"{"choices":[],"usage":null}"#).is_none());
        assert!(!mentions_usage(b"data: {\"choices\":[]}"));
    }
}
