//! The few places where providers differ from OpenAI in ways SDKs notice,
//! made uniform without re-encoding anything else:
//! - a `usage.cached_tokens` (Moonshot's name; any provider's answer that
//!   uses it) is mirrored into `usage.prompt_tokens_details.cached_tokens`;
//! - a stream whose client asked for `stream_options.include_usage` gets the
//!   standard `choices: []` usage chunk, synthesised from usage sent on a
//!   chunk with choices (Moonshot's in-choice usage, or a top-level one)
//!   when the provider did not send one.

use super::usage::{BodyUsage, UsageReport};
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Adds `prompt_tokens_details.cached_tokens` to a usage object that only has
/// Moonshot's `cached_tokens`.
pub fn mirror_cached_tokens(usage: &mut Value) {
    let Some(cached) = usage.get("cached_tokens").and_then(Value::as_u64) else {
        return;
    };
    let Some(object) = usage.as_object_mut() else {
        return;
    };
    let details = object
        .entry("prompt_tokens_details")
        .or_insert_with(|| json!({}));
    if let Some(details) = details.as_object_mut() {
        details.entry("cached_tokens").or_insert(json!(cached));
    }
}

/// A non-stream body with the cached-token mirror added to its top-level
/// `usage` (found by [`find_body_usage`]); the original bytes when nothing
/// needs adding.
///
/// [`find_body_usage`]: super::usage::find_body_usage
pub fn mirror_cached_tokens_in_body(body: Bytes, usage: Option<&BodyUsage>) -> Bytes {
    let Some((cached, span)) = usage.and_then(|u| Some((u.unmirrored_cached?, &u.span))) else {
        return body;
    };
    // Insert before the usage object's closing brace; every other byte stays.
    let close = span.end - 1;
    let mut number = itoa::Buffer::new();
    let parts: [&[u8]; 5] = [
        &body[..close],
        b",\"prompt_tokens_details\":{\"cached_tokens\":",
        number.format(cached).as_bytes(),
        b"}",
        &body[close..],
    ];
    parts.concat().into()
}

/// The `id`, `created` and `model` of a stream's first chunks, as sent:
/// the synthesised usage chunk repeats them when the chunk its usage came
/// from lacks them, as the SDKs' chunk types expect all three. A
/// placeholder (`""`, `0`, `null`: Agentsflare's prompt-filter chunk comes
/// first with those) is not taken; a later chunk's value is.
#[derive(Debug, Default)]
pub struct ChunkIdentity {
    id: Option<Box<RawValue>>,
    created: Option<Box<RawValue>>,
    model: Option<Box<RawValue>>,
    /// Chunks read so far.
    reads: u8,
}

/// How many of a stream's first chunks are read for their identity: past
/// them, a member still missing stays missing (the provider never sends it).
const IDENTITY_READS: u8 = 4;

impl ChunkIdentity {
    /// Read from one event's data; empty when it is not a JSON object.
    pub fn read(data: &[u8]) -> ChunkIdentity {
        let mut identity = ChunkIdentity::default();
        identity.fill_from(data);
        identity
    }

    /// Whether another chunk should be read for members still missing.
    pub fn wants_more(&self) -> bool {
        self.reads < IDENTITY_READS
            && (self.id.is_none() || self.created.is_none() || self.model.is_none())
    }

    /// Takes the members still missing from one more event's data.
    pub fn fill_from(&mut self, data: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Members<'a> {
            #[serde(borrow)]
            id: Option<&'a RawValue>,
            #[serde(borrow)]
            created: Option<&'a RawValue>,
            #[serde(borrow)]
            model: Option<&'a RawValue>,
        }
        self.reads = self.reads.saturating_add(1);
        let Ok(members) = serde_json::from_slice::<Members>(data) else {
            return;
        };
        let real = |value: Option<&RawValue>| {
            value
                .filter(|v| !matches!(v.get(), "\"\"" | "0" | "null"))
                .map(RawValue::to_owned)
        };
        for (slot, value) in [
            (&mut self.id, members.id),
            (&mut self.created, members.created),
            (&mut self.model, members.model),
        ] {
            if slot.is_none() {
                *slot = real(value);
            }
        }
    }
}

/// The standard final usage chunk for a stream, built from a usage report;
/// a member its chunk lacked is the stream's first chunk's, else `null`.
pub fn usage_chunk(report: &UsageReport, first: Option<&ChunkIdentity>) -> Bytes {
    let mut usage: Value = serde_json::from_str(report.raw()).unwrap_or_default();
    mirror_cached_tokens(&mut usage);
    // Each member as sent (a value of the event, so valid JSON).
    let as_sent = |member: Option<&str>, earlier: Option<&RawValue>| {
        member
            .and_then(|text| RawValue::from_string(text.to_owned()).ok())
            .or_else(|| earlier.map(RawValue::to_owned))
            .unwrap_or_else(|| RawValue::NULL.to_owned())
    };
    let none = ChunkIdentity::default();
    let first = first.unwrap_or(&none);
    let chunk = json!({
        "id": as_sent(report.id(), first.id.as_deref()),
        "object": "chat.completion.chunk",
        "created": as_sent(report.created(), first.created.as_deref()),
        "model": as_sent(report.model(), first.model.as_deref()),
        "choices": [],
        "usage": usage,
    });
    format!("data: {chunk}\n\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::usage::{find_body_usage, parse_usage};

    fn mirrored(body: Bytes) -> Bytes {
        let usage = find_body_usage(&body);
        mirror_cached_tokens_in_body(body, usage.as_ref())
    }

    #[test]
    fn mirrors_moonshot_cached_tokens_in_a_body() {
        let body = Bytes::from_static(
            br#"{"id":"x","usage":{"prompt_tokens":5,"cached_tokens":2} ,"z":1}"#,
        );
        let out = mirrored(body);
        assert_eq!(
            &out[..],
            br#"{"id":"x","usage":{"prompt_tokens":5,"cached_tokens":2,"prompt_tokens_details":{"cached_tokens":2}} ,"z":1}"#
        );
    }

    #[test]
    fn leaves_openai_usage_alone() {
        let body = Bytes::from_static(
            br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":0}}}"#,
        );
        assert_eq!(mirrored(body.clone()), body);
        let none = Bytes::from_static(br#"{"choices":[]}"#);
        assert_eq!(mirrored(none.clone()), none);
    }

    #[test]
    fn synthesises_the_usage_chunk_from_in_choice_usage() {
        let report = parse_usage(
            br#"{"id":"c1","created":7,"model":"kimi","choices":[{"index":0,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"cached_tokens":1}}]}"#,
        )
        .unwrap();
        let first = ChunkIdentity::read(br#"{"id":"c0","created":6,"model":"k"}"#);
        let chunk = usage_chunk(&report, Some(&first));
        let text = std::str::from_utf8(&chunk).unwrap();
        assert!(text.starts_with("data: ") && text.ends_with("\n\n"));
        let v: Value = serde_json::from_str(text[6..].trim()).unwrap();
        assert_eq!(v["choices"], json!([]));
        assert_eq!(v["id"], "c1");
        assert_eq!(v["created"], 7);
        assert_eq!(v["usage"]["total_tokens"], 3);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    }

    /// A usage chunk that lacks `created` and `model` (or all three) takes
    /// the stream's first chunk's rather than sending `null`.
    #[test]
    fn members_the_usage_came_without_are_the_first_chunks() {
        let report = parse_usage(
            br#"{"id":"c1","choices":[{"index":0,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}]}"#,
        )
        .unwrap();
        let first = ChunkIdentity::read(br#"{"id":"c0","created":6,"model":"kimi","choices":[]}"#);
        let chunk = |first: Option<&ChunkIdentity>| {
            let chunk = usage_chunk(&report, first);
            serde_json::from_slice::<Value>(chunk.strip_prefix(b"data: ").unwrap()).unwrap()
        };
        let v = chunk(Some(&first));
        assert_eq!(
            (&v["id"], &v["created"], &v["model"]),
            (&json!("c1"), &json!(6), &json!("kimi"))
        );
        let v = chunk(Some(&ChunkIdentity::read(b"[DONE]")));
        assert_eq!((&v["created"], &v["model"]), (&Value::Null, &Value::Null));
        // A first chunk of placeholders (Agentsflare's prompt-filter
        // chunk) gives way to the next chunk's values.
        let mut filter = ChunkIdentity::read(br#"{"id":"","created":0,"model":"","choices":[]}"#);
        assert!(filter.wants_more());
        filter.fill_from(br#"{"id":"c2","created":7,"model":"kimi-k2.6","choices":[]}"#);
        assert!(!filter.wants_more());
        let v = chunk(Some(&filter));
        assert_eq!(
            (&v["created"], &v["model"]),
            (&json!(7), &json!("kimi-k2.6"))
        );
    }
}
