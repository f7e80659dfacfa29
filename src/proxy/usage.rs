//! Token usage as the providers report it: OpenAI's top-level `usage` (also
//! the `choices: []` chunk of `stream_options.include_usage`) or Moonshot's
//! `usage` inside `choices[0]` of the last chunk, with cached prompt tokens
//! under either name.

use super::usage_event::EventMembers;
use super::whole_count::whole_count;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::LazyLock;

static USAGE_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));

/// Where the last `"usage"` in `body` starts. From the `g`s backwards
/// (`memrchr` is vectorised; memmem's reverse finder is not, and cost ~600
/// instructions on a small completion): the counts that follow the key,
/// `prompt_tokens`, `completion_tokens`, `total_tokens`, have none.
fn rfind_usage_key(body: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"usage\"";
    const G_AT: usize = 4;
    let mut end = body.len();
    while let Some(g) = memchr::memrchr(b'g', &body[..end]) {
        if let Some(start) = g.checked_sub(G_AT)
            && body[start..].starts_with(KEY)
        {
            return Some(start);
        }
        end = g;
    }
    None
}

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

/// A usage report and the event it came from.
#[derive(Debug, Clone)]
pub struct UsageReport {
    pub usage: Usage,
    pub place: UsagePlace,
    /// Whether the object gave any of the three counts: `{}` (or counts
    /// all `null`) is no report, and leaves a request at its estimate.
    pub counted: bool,
    /// The event's data (valid UTF-8), which the spans below index: kept
    /// for the rare standard usage chunk built from it, one copy rather
    /// than a copy per member.
    event: Bytes,
    /// The `usage` object as sent.
    raw: Range<usize>,
    id: Option<Range<usize>>,
    created: Option<Range<usize>>,
    model: Option<Range<usize>>,
}

impl UsageReport {
    fn member(&self, span: &Range<usize>) -> &str {
        std::str::from_utf8(&self.event[span.clone()]).unwrap_or("null")
    }

    /// The `usage` object as sent.
    pub fn raw(&self) -> &str {
        self.member(&self.raw)
    }

    /// Where the `usage` object is in the event's data.
    pub fn raw_span(&self) -> Range<usize> {
        self.raw.clone()
    }

    /// The event's top-level `id`, `created` and `model` values as sent.
    pub fn id(&self) -> Option<&str> {
        self.id.as_ref().map(|span| self.member(span))
    }

    pub fn created(&self) -> Option<&str> {
        self.created.as_ref().map(|span| self.member(span))
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(|span| self.member(span))
    }
}

/// An object's members in order, keys unescaped, values left raw (the
/// delta, maybe long, is skipped, not decoded). Read as a list, not into
/// named fields: a member repeated or spelled with escapes is read as a
/// JSON reader without duplicate checks reads it (the last one counts), and
/// a member of an unexpected kind (`"choices": null`) does not make the
/// others unreadable.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    members.push((key, map.next_value()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

impl<'a> Members<'a> {
    /// The last member named `name`.
    fn last(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|m| m.1)
    }
}

/// A key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// A JSON object (not `null` or another kind of value).
fn is_object(raw: &&RawValue) -> bool {
    raw.get().starts_with('{')
}

/// The most tokens one count of one answer is logged and counted as: a
/// provider's larger claim (up to 2^64 - 1) added to a 64-bit counter
/// would wrap it, and Prometheus reads a counter that went down as a
/// restart. Far beyond any context window, so real counts pass exactly.
pub const MAX_COUNTED_TOKENS: u64 = u32::MAX as u64;

impl Usage {
    /// Every count zero.
    pub fn counts_nothing(&self) -> bool {
        self.prompt_tokens == 0 && self.completion_tokens == 0 && self.total_tokens == 0
    }

    /// Each count held to [`MAX_COUNTED_TOKENS`], as the log and the
    /// metrics record it.
    pub fn counted(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.min(MAX_COUNTED_TOKENS),
            completion_tokens: self.completion_tokens.min(MAX_COUNTED_TOKENS),
            total_tokens: self.total_tokens.min(MAX_COUNTED_TOKENS),
            cached_tokens: self.cached_tokens.min(MAX_COUNTED_TOKENS),
        }
    }

    fn from_value(raw: &Value) -> Usage {
        let count = |v: &Value| count_of(v).unwrap_or(0);
        let cached = count_of(&raw["prompt_tokens_details"]["cached_tokens"])
            .or(count_of(&raw["cached_tokens"]))
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
    /// Whether the object gave any of the three counts (see
    /// [`UsageReport::counted`]).
    pub counted: bool,
    /// Where the usage object sits in the body.
    pub span: Range<usize>,
    /// Moonshot's `cached_tokens`, when no `prompt_tokens_details` is beside it.
    pub unmirrored_cached: Option<u64>,
}

/// The usage fields, read without building a JSON tree.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct UsageFields {
    pub(super) prompt_tokens: Option<u64>,
    pub(super) completion_tokens: Option<u64>,
    pub(super) total_tokens: Option<u64>,
    pub(super) cached_tokens: Option<u64>,
    /// `prompt_tokens_details.cached_tokens` (OpenAI's place for it).
    pub(super) details_cached: Option<u64>,
    /// Whether `prompt_tokens_details` is there at all.
    pub(super) has_details: bool,
}

/// A count as JSON writes it: `Some(None)` for `null`, `Some(Some(n))` for
/// a number in any form (`11`, `11.0`, `1.1e1`: see [`whole_count`]; one
/// below zero counts 0), `None` for anything else (a string, a list).
fn plain_count(value: &[u8]) -> Option<Option<u64>> {
    match value.first()? {
        b'n' if value == b"null" => Some(None),
        b'-' | b'0'..=b'9' => Some(Some(whole_count(value).unwrap_or(0))),
        _ => None,
    }
}

/// Whether a usage object read the lenient way gives any of the counts.
fn value_counts_any(usage: &Value) -> bool {
    ["prompt_tokens", "completion_tokens", "total_tokens"]
        .into_iter()
        .any(|name| count_of(&usage[name]).is_some())
}

/// A count read the lenient way: a number in any form as [`plain_count`]
/// reads it, anything else none.
fn count_of(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => Some(
            n.as_u64()
                .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
                .unwrap_or(0),
        ),
        _ => None,
    }
}

impl UsageFields {
    /// Reads a usage object without a deserializer (this runs once per
    /// response): the usual shape in one pass ([`super::usage_flat`]), any
    /// other with the validating scan. `None` when the object holds what a
    /// plain reading does not cover (a count that is not plain digits, a
    /// repeated member, an escaped key, invalid JSON): the caller then reads
    /// it the lenient way.
    fn scan(raw: &[u8]) -> Option<UsageFields> {
        super::usage_flat::read(raw).or_else(|| UsageFields::scan_members(raw))
    }

    /// The bit of `prompt_tokens_details` among [`UsageFields::slot`]'s.
    pub(super) const DETAILS: u8 = 16;

    /// A member the reading knows: its own bit (a reader notes the bits
    /// seen, since a repeated member is refused by the deserializer) and
    /// the field its count goes to; `None` for any other key.
    pub(super) fn slot(&mut self, key: &[u8]) -> Option<(u8, &mut Option<u64>)> {
        Some(match key {
            b"prompt_tokens" => (1, &mut self.prompt_tokens),
            b"completion_tokens" => (2, &mut self.completion_tokens),
            b"total_tokens" => (4, &mut self.total_tokens),
            b"cached_tokens" => (8, &mut self.cached_tokens),
            b"prompt_tokens_details" => (Self::DETAILS, &mut self.details_cached),
            _ => return None,
        })
    }

    /// [`UsageFields::scan`] by the validating scan, for any shape.
    pub(super) fn scan_members(raw: &[u8]) -> Option<UsageFields> {
        let mut fields = UsageFields::default();
        let mut plain = true;
        let mut seen = 0u8;
        super::json_scan::scan_object(raw, |key, span| {
            let value = &raw[span];
            let Some((bit, slot)) = fields.slot(key) else {
                plain &= !key.contains(&b'\\');
                return;
            };
            plain &= seen & bit == 0;
            seen |= bit;
            let count = if bit == UsageFields::DETAILS {
                details_cached(value)
            } else {
                plain_count(value)
            };
            match count {
                Some(count) => *slot = count,
                None => plain = false,
            }
            fields.has_details |= bit == UsageFields::DETAILS;
        })
        .ok()?;
        plain.then_some(fields)
    }

    /// Whether any of the three counts is given (a number, not `null`).
    fn counts_any(&self) -> bool {
        self.prompt_tokens.is_some()
            || self.completion_tokens.is_some()
            || self.total_tokens.is_some()
    }

    /// The counts, and Moonshot's top-level `cached_tokens` if present
    /// without a `prompt_tokens_details` beside it.
    fn read(self) -> (Usage, Option<u64>) {
        let usage = Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: self.completion_tokens.unwrap_or(0),
            total_tokens: self.total_tokens.unwrap_or(0),
            cached_tokens: self.details_cached.or(self.cached_tokens).unwrap_or(0),
        };
        (usage, self.cached_tokens.filter(|_| !self.has_details))
    }
}

/// `prompt_tokens_details`: `null`, or an object whose `cached_tokens` is
/// read (its other members are not). `None` as for [`plain_count`].
fn details_cached(value: &[u8]) -> Option<Option<u64>> {
    if value == b"null" {
        return Some(None);
    }
    let mut cached = None;
    let mut plain = value.starts_with(b"{");
    super::json_scan::scan_object(value, |key, span| match key {
        b"cached_tokens" if cached.is_none() => match plain_count(&value[span]) {
            Some(count) => cached = Some(count),
            None => plain = false,
        },
        b"cached_tokens" => plain = false,
        _ => plain &= !key.contains(&b'\\'),
    })
    .ok()?;
    plain.then(|| cached.flatten())
}

/// Usage from a non-stream body: only the top-level `usage` value is
/// parsed, located by a scan (the choices, maybe long, are not decoded).
pub fn find_body_usage(body: &[u8]) -> Option<BodyUsage> {
    if let Some(found) = usage_at_the_end(body) {
        return Some(found);
    }
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
    let span = span?;
    let raw = &body[span.clone()];
    let (usage, unmirrored_cached, counted) = match UsageFields::scan(raw) {
        Some(fields) => {
            let counted = fields.counts_any();
            let (usage, unmirrored_cached) = fields.read();
            (usage, unmirrored_cached, counted)
        }
        // Unusual values (floats, nulls in odd places): the lenient way.
        None => {
            let value: Value = serde_json::from_slice(raw).ok()?;
            value.is_object().then_some(())?;
            let counted = value_counts_any(&value);
            (
                Usage::from_value(&value),
                unmirrored_cached_of(&value),
                counted,
            )
        }
    };
    Some(BodyUsage {
        usage,
        counted,
        span,
        unmirrored_cached,
    })
}

/// The common shape, found from the end without scanning the choices:
/// `"usage": {…}` as the body's last member (`{…}` parsed on its own, then
/// only `}` and whitespace). The last `"usage"` key followed by the object
/// that closes the document is the top-level one.
fn usage_at_the_end(body: &[u8]) -> Option<BodyUsage> {
    let key = rfind_usage_key(body)?;
    // A member's key follows `{` or `,`: not the end of a key that only
    // ends in `usage` (`"\"usage"`), nor a body missing its comma.
    if !matches!(body[..key].trim_ascii_end().last(), Some(b'{' | b',')) {
        return None;
    }
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
    let fields = UsageFields::scan(&body[span.clone()])?;
    let counted = fields.counts_any();
    let (usage, unmirrored_cached) = fields.read();
    Some(BodyUsage {
        usage,
        counted,
        span,
        unmirrored_cached,
    })
}

/// Moonshot's top-level `cached_tokens` when no `prompt_tokens_details` is
/// beside it (the lenient reading of [`UsageFields::read`]'s second value).
fn unmirrored_cached_of(usage: &Value) -> Option<u64> {
    count_of(&usage["cached_tokens"]).filter(|_| usage.get("prompt_tokens_details").is_none())
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
        let start =
            memchr::memrchr2(b'\n', b'\r', &events[from..at]).map_or(from, |i| from + i + 1);
        let end = memchr::memchr2(b'\n', b'\r', &events[at..]).map_or(events.len(), |i| at + i);
        from = end;
        Some(&events[start..end])
    })
}

/// Usage from one event's data (a complete JSON document): OpenAI's
/// top-level `usage` object, else the first choice's (Moonshot's). The
/// members are found by the event reader (or, for what it leaves, by
/// deserializing); the report keeps one copy of the event and their places
/// in it.
pub fn parse_usage(json: &[u8]) -> Option<UsageReport> {
    let members = super::usage_event::read(json).or_else(|| deserialize_members(json))?;
    let (raw, place) = match members.usage.filter(|span| json[span.start] == b'{') {
        Some(raw) => (raw, UsagePlace::TopLevel),
        None => (members.choice_usage?, UsagePlace::InChoice),
    };
    let (usage, counted) = match UsageFields::scan(&json[raw.clone()]) {
        Some(fields) => {
            let counted = fields.counts_any();
            (fields.read().0, counted)
        }
        // Unusual values (floats, nulls in odd places): the lenient way.
        None => {
            let value = serde_json::from_slice(&json[raw.clone()]).ok()?;
            (Usage::from_value(&value), value_counts_any(&value))
        }
    };
    Some(UsageReport {
        usage,
        place,
        counted,
        event: Bytes::copy_from_slice(json),
        raw,
        id: members.id,
        created: members.created,
        model: members.model,
    })
}

/// The event's members by deserializing it: for events the reader leaves,
/// and the reference the reader is tested against.
pub(super) fn deserialize_members(json: &[u8]) -> Option<EventMembers> {
    let members: Members = serde_json::from_slice(json).ok()?;
    // The members borrow from `json`: their places in it.
    let span = |value: &RawValue| {
        let start = value.get().as_ptr() as usize - json.as_ptr() as usize;
        start..start + value.get().len()
    };
    let member = |name| {
        members
            .last(name)
            .filter(|value| value.get() != "null")
            .map(span)
    };
    // The first choice whose `usage` is an object; `choices` of another
    // kind than a list of objects has none.
    let choice_usage = members
        .last("choices")
        .and_then(|choices| serde_json::from_str::<Vec<&RawValue>>(choices.get()).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|choice| serde_json::from_str::<Members>(choice.get()).ok())
        .find_map(|choice| choice.last("usage").filter(is_object))
        .map(span);
    Some(EventMembers {
        id: member("id"),
        created: member("created"),
        model: member("model"),
        usage: member("usage"),
        choice_usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backwards search from the `g`s finds what a reverse substring
    /// search finds: bodies made of pieces full of near misses (`g`s,
    /// partial keys, keys at the very start and end), in every order.
    #[test]
    fn the_last_usage_key_is_found_as_a_reverse_search_finds_it() {
        let pieces: [&[u8]; 9] = [
            b"\"usage\"",
            b"usage\"",
            b"\"usag",
            b"g",
            b"\"usage",
            b"{\"reasoning_tokens\":1}",
            b"\"\"usage\"\"",
            b"x",
            b"ge\"",
        ];
        let reverse = memchr::memmem::FinderRev::new(b"\"usage\"");
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut body = Vec::new();
            for _ in 0..rng.usize(0..8) {
                body.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            }
            assert_eq!(
                rfind_usage_key(&body),
                reverse.rfind(&body),
                "{}",
                String::from_utf8_lossy(&body)
            );
        }
    }

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
        assert_eq!(report.id(), Some("\"c1\""));
        assert_eq!(report.model(), Some("\"kimi\""));
        assert!(report.created().is_none());
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
        // A count in another number form is read as its value, top-level
        // or in a choice.
        for (event, counts) in [
            (
                &br#"{"choices":[],"usage":{"prompt_tokens":2.0,"completion_tokens":1,"total_tokens":3}}"#[..],
                (2, 1, 3),
            ),
            (
                br#"{"choices":[{"usage":{"prompt_tokens":1.1e1,"completion_tokens":7,"total_tokens":18.0}}]}"#,
                (11, 7, 18),
            ),
        ] {
            let usage = parse_usage(event).unwrap().usage;
            let read = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens);
            assert_eq!(read, counts);
        }
        // Escapes inside skipped members do not matter.
        let report = parse_usage(
            br#"{"id":"a\"b","choices":[{"delta":{"content":"\u00e9\n"}}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}"#,
        )
        .unwrap();
        assert_eq!(report.usage.total_tokens, 9);
        assert_eq!(report.id(), Some(r#""a\"b""#));
    }

    /// A usage chunk whose `choices` is not a list of objects (some
    /// OpenAI-compatible servers send `null` or leave it out), or whose
    /// members are repeated or spelled with escapes, still has its usage
    /// read: the last member of a name counts, as JSON readers without
    /// duplicate checks read it.
    #[test]
    fn usage_beside_odd_choices_or_repeated_members_is_read() {
        let usage = r#""usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#;
        for event in [
            format!(r#"{{"id":"c1","choices":null,{usage}}}"#),
            format!(r#"{{"id":"c1","choices":{{}},{usage}}}"#),
            format!(r#"{{"id":"c1","choices":[1,"x",null],{usage}}}"#),
            format!(r#"{{"id":"c1",{usage}}}"#),
            format!(r#"{{"id":"c0","id":"c1","choices":[],{usage}}}"#),
            format!(r#"{{"id":"c1","usage":null,{usage}}}"#),
            format!(
                r#"{{"\u0069d":"c1",{}}}"#,
                usage.replace("usage", "us\\u0061ge")
            ),
        ] {
            let report = parse_usage(event.as_bytes()).expect(&event);
            assert_eq!(report.usage.total_tokens, 3, "{event}");
            assert_eq!(report.place, UsagePlace::TopLevel, "{event}");
            assert_eq!(report.id(), Some(r#""c1""#), "{event}");
        }
        // The last `usage` counts, `null` included.
        assert!(
            parse_usage(format!(r#"{{"choices":[],{usage},"usage":null}}"#).as_bytes()).is_none()
        );
        // A choice's usage beside choices that are not objects.
        let report = parse_usage(
            br#"{"choices":[7,{"usage":null,"usage":{"total_tokens":4}}],"usage":null}"#,
        )
        .unwrap();
        assert_eq!(
            (report.place, report.usage.total_tokens),
            (UsagePlace::InChoice, 4)
        );
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
        // A key that only ends in `usage`, or a body missing its comma, is
        // not read from the end (the full scan decides, and refuses).
        for body in [
            br#"{"id":"x","choices":[],""usage":{"total_tokens":4}}"#.as_slice(),
            br#"{"id":"x","choices":[]"usage":{"total_tokens":4}}"#,
        ] {
            assert!(
                usage_at_the_end(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(
                find_body_usage(body).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A count in another number form is its value; a `null` none.
        let odd = find_body_usage(
            br#"{"usage":{"prompt_tokens":2.0,"completion_tokens":3,"total_tokens":null}}"#,
        )
        .unwrap();
        assert_eq!(
            (odd.usage.prompt_tokens, odd.usage.completion_tokens),
            (2, 3)
        );
        // Written as exponents, cached tokens included, or beyond a float.
        let odd = find_body_usage(
            br#"{"usage":{"prompt_tokens":1.1e1,"completion_tokens":7E0,"total_tokens":1e400,"cached_tokens":3.0}}"#,
        )
        .unwrap();
        assert_eq!(
            odd.usage,
            Usage {
                prompt_tokens: 11,
                completion_tokens: 7,
                total_tokens: u64::MAX,
                cached_tokens: 3,
            }
        );
        assert_eq!(odd.unmirrored_cached, Some(3));
    }

    #[test]
    fn the_scan_reads_what_the_lenient_way_reads() {
        let values = [
            "0",
            "7",
            "18446744073709551615",
            "18446744073709551616",
            "2.0",
            "-1",
            "1e3",
            "null",
            "\"3\"",
            "true",
            "{}",
            "[]",
        ];
        let mut objects = vec![
            r#"{}"#.to_owned(),
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#.to_owned(),
            r#"{"prompt\u005ftokens":4,"total_tokens":5}"#.to_owned(),
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#.to_owned(),
            r#"{"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":3},"cached_tokens":1}"#
                .to_owned(),
            r#"{ "prompt_tokens" : 3 , "completion_tokens":4 }"#.to_owned(),
        ];
        for value in values {
            for key in [
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cached_tokens",
                "other",
            ] {
                objects.push(format!(r#"{{"total_tokens":9,"{key}":{value}}}"#));
            }
            objects.push(format!(
                r#"{{"prompt_tokens_details":{value},"cached_tokens":4}}"#
            ));
            objects.push(format!(
                r#"{{"prompt_tokens_details":{{"cached_tokens":{value}}},"cached_tokens":4}}"#
            ));
        }
        let mut read_by_scan = 0;
        for object in &objects {
            let value: Value = serde_json::from_str(object).unwrap();
            let lenient = (Usage::from_value(&value), unmirrored_cached_of(&value));
            if let Some(fields) = UsageFields::scan(object.as_bytes()) {
                read_by_scan += 1;
                assert_eq!(fields.read(), lenient, "{object}");
            }
        }
        // Read by the scan: numbers and nulls under each key but the
        // repeated `total_tokens` (8 * 3) and in `prompt_tokens_details`
        // (8 + null + `{}`), any value of an unknown member (12), and the
        // first three objects that are neither repeated nor escaped.
        assert_eq!(read_by_scan, 24 + 10 + 12 + 3);
        // Not JSON: nothing read.
        assert!(UsageFields::scan(br#"{"prompt_tokens":1"#).is_none());
        assert!(UsageFields::scan(br#"{"prompt_tokens":01}"#).is_none());
    }

    #[test]
    fn no_usage() {
        assert!(parse_usage(br#"{"choices":[{"delta":{"content":"hi"}}]}"#).is_none());
        assert!(parse_usage(br#"{"choices":[],"usage":null}"#).is_none());
        assert!(!mentions_usage(b"data: {\"choices\":[]}"));
    }
}
