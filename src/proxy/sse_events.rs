//! What a relayed stream's events mean to the gateway: where `[DONE]` is,
//! which event is the provider's error (and that event without the
//! provider's key), whether a block is an event at all, and whether a
//! chunk is the `include_usage` usage chunk.

use super::provider_errors::StreamError;
use super::sse_lines::{data_value, event_data, event_end, event_start, lines};
use std::ops::Range;
use std::sync::LazyLock;

static DONE_VALUE: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"[DONE]"));

static ERROR_KEY: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\"error\""));

/// Where the `data` line of the first event whose data begins with
/// `[DONE]` starts in `events`, if there is one. That is how the official
/// SDKs read the end (`data.startswith("[DONE]")`): the space after the
/// colon is optional (`data:[DONE]`), anything may follow on the line, and
/// a `[DONE]` on an event's second data line is no end (its data begins
/// with the first).
pub(super) fn find_done(events: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = DONE_VALUE.find(&events[from..]) {
        let at = from + found;
        from = at + 1;
        let before = &events[..at];
        let before = before.strip_suffix(b" ").unwrap_or(before);
        let Some(line_start) = before.strip_suffix(b"data:").map(<[u8]>::len) else {
            continue;
        };
        if line_start > 0 && !matches!(events[line_start - 1], b'\n' | b'\r') {
            continue;
        }
        // The usual case: the line starts its event. Otherwise no data
        // line may come before it in the event.
        let event = event_start(events, line_start);
        if event == line_start
            || !lines(&events[event..line_start]).any(|line| data_value(line).is_some())
        {
            return Some(line_start);
        }
    }
    None
}

static EVENT_FIELD: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"event:"));

/// In both an `error` member and an `event: error` line: one pass over a
/// read that has neither (nearly every read) decides.
static ERROR_WORD: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"error"));

/// Whether `events` mention `statusCode` (a chunk's text that does costs
/// a look at each event's first member). Found by its capital `C`, rare
/// in a chunk, with one `memchr`: a `memmem` finder costs several times
/// as much on reads of a few hundred bytes.
fn mentions_status_code(events: &[u8]) -> bool {
    const WORD: &[u8] = b"statusCode";
    const C_AT: usize = 6;
    memchr::memchr_iter(b'C', events).any(|at| at >= C_AT && events[at - C_AT..].starts_with(WORD))
}

/// A provider's own error event among `events`, the first of: one whose
/// data has an `error` member (`data: {"error":{...}}`), one named `error`
/// (`event: error`), or AI/ML API's or Agentsflare's error document
/// (`{"statusCode":429,"message":…}`, as a 2xx body in that shape is an
/// error; at the answer's first event, at `answer_at` before the answer
/// has begun, also without `statusCode` as its first member). The error,
/// and where its event starts and ends.
pub(super) fn provider_error_event(
    events: &[u8],
    provider: &crate::config::Provider,
    answer_at: Option<usize>,
) -> Option<(StreamError, Range<usize>)> {
    if let Some(at) = answer_at
        && let Some(found) = status_document_at(events, at, provider)
    {
        return Some(found);
    }
    let member_or_named = error_member_or_named(events, provider);
    // Rare (a chunk quoting the word): only then is each event looked at.
    if !mentions_status_code(events) {
        return member_or_named;
    }
    let before = member_or_named
        .as_ref()
        .map_or(events.len(), |(_, range)| range.start);
    let document = status_document_before(events, before, provider);
    document.or(member_or_named)
}

/// The first of `events`' events that starts before `before` and is AI/ML
/// API's or Agentsflare's error document.
fn status_document_before(
    events: &[u8],
    before: usize,
    provider: &crate::config::Provider,
) -> Option<(StreamError, Range<usize>)> {
    data_event_starts(events)
        .take_while(|&start| start < before)
        .find_map(|start| status_document_at(events, start, provider))
}

/// The first event of `events` whose data has an `error` member, or that
/// is named `error`.
fn error_member_or_named(
    events: &[u8],
    provider: &crate::config::Provider,
) -> Option<(StreamError, Range<usize>)> {
    let from = ERROR_WORD.find(events)?;
    // Providers name no events in a chat stream: the search for a name
    // runs only where `error` is (a text that mentions it) and finds none.
    let error_member = ERROR_KEY.find(&events[from.saturating_sub(1)..]).is_some();
    if !error_member && EVENT_FIELD.find(events).is_none() {
        return None;
    }
    data_event_starts(events).find_map(|start| {
        let end = event_end(events, start).unwrap_or(events.len());
        let event = &events[start..end];
        let line = lines(event).find(|line| data_value(line).is_some())?;
        let (_, data) = event_data(event, line);
        let data = data.trim_ascii();
        let err = error_member
            .then(|| super::provider_errors::stream_error(data, provider))
            .flatten()
            .or_else(|| {
                named_error(event)
                    .then(|| super::provider_errors::named_error_event(data, provider))
            })?;
        Some((err, start..end))
    })
}

/// Where each event of `events` that has a data line starts, in order.
/// Each line is looked at a bounded number of times, so an event of many
/// `data:` lines costs its length, not its length times its lines.
fn data_event_starts(events: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + first_event_start(events.get(from..)?)?;
        from = event_end(events, start).unwrap_or(events.len());
        Some(start)
    })
}

/// The event at `at` in `events` when it is AI/ML API's or Agentsflare's
/// error document, read from its first data line's first member (a chunk
/// begins with another), so the stream's first event pays a few
/// comparisons for it.
fn status_document_at(
    events: &[u8],
    at: usize,
    provider: &crate::config::Provider,
) -> Option<(StreamError, Range<usize>)> {
    // The usual event begins with its data line: its first member is
    // looked at before the line's end is looked for (a line that ends
    // before one, `data: {` alone, leaves it to the data joined).
    if let Some(data) = events[at..].strip_prefix(b"data:")
        && !first_line_may_open_status_document(data)
    {
        return None;
    }
    let line = lines(&events[at..]).find(|line| data_value(line).is_some())?;
    // All its data lines, joined as SSE joins them.
    let (_, data) = event_data(events, line);
    let data = data.trim_ascii();
    if !opens_status_document(data) {
        return None;
    }
    let found = super::provider_errors::status_document_event(data, provider)?;
    let line_end = line.as_ptr() as usize - events.as_ptr() as usize + line.len();
    let end = event_end(events, line_end).unwrap_or(events.len());
    Some((found, at..end))
}

/// Whether a first data line (`data` after `data:`) may begin AI/ML
/// API's or Agentsflare's error document: it begins with its first
/// member, or ends before one.
fn first_line_may_open_status_document(data: &[u8]) -> bool {
    let blanks = |text: &[u8]| {
        text.iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count()
    };
    let data = &data[blanks(data)..];
    let Some(inside) = data.strip_prefix(b"{") else {
        return matches!(data.first(), None | Some(b'\n' | b'\r'));
    };
    let member = &inside[blanks(inside)..];
    matches!(member.first(), None | Some(b'\n' | b'\r'))
        || super::provider_errors::opens_status_document(member)
}

/// Whether `data` begins with the first member of AI/ML API's or
/// Agentsflare's error document.
fn opens_status_document(data: &[u8]) -> bool {
    data.trim_ascii_start()
        .strip_prefix(b"{")
        .map(<[u8]>::trim_ascii_start)
        .is_some_and(super::provider_errors::opens_status_document)
}

/// Whether an event has the field line `event: error`.
fn named_error(event: &[u8]) -> bool {
    lines(event).any(|line| {
        line.strip_prefix(b"event:")
            .is_some_and(|name| name.strip_prefix(b" ").unwrap_or(name) == b"error")
    })
}

/// How a provider's error event goes to the client.
pub(super) enum ErrorEventAs {
    /// As it came: it quotes none of the provider's keys.
    Sent,
    /// With the key masked where it was quoted.
    Redacted(Vec<u8>),
    /// Replaced by the gateway's own error event: its data is not one
    /// whole JSON document (text after it, a string left open, a lone
    /// surrogate escape), so no search of its strings could be sure to
    /// find every quote of a key.
    Replaced,
}

/// A provider's error event as the client gets it: the same bytes, unless
/// it quotes one of the provider's keys: in a string of its data, as JSON
/// decodes it (escaped as `\/` or `\u0061` too), or in another line (`id:`,
/// a comment). Then the key is masked there and the event rewritten: its
/// other lines in order, its data where its first data line was, one
/// `data:` line for each line of the data (SSE joins them with LF again).
/// Data that is not one whole JSON document is not passed on at all.
pub(super) fn redacted_error_event(
    event: &[u8],
    provider: &crate::config::Provider,
) -> ErrorEventAs {
    use super::key_redaction::{redact_json_strings, redact_secrets};
    let Some(first_data) = lines(event).find(|line| data_value(line).is_some()) else {
        return ErrorEventAs::Replaced;
    };
    let (_, data) = event_data(event, first_data);
    let data = data.trim_ascii();
    // Strict: one value, nothing after it, every escape a character.
    if serde_json::from_slice::<serde_json::Value>(data).is_err() {
        return ErrorEventAs::Replaced;
    }
    let redacted_data = redact_json_strings(data, provider);
    let other_lines_quote_key = lines(event)
        .filter(|line| data_value(line).is_none())
        .any(|line| redact_secrets(line, provider).is_some());
    if redacted_data.is_none() && !other_lines_quote_key {
        return ErrorEventAs::Sent;
    }
    let data = redacted_data.as_deref().unwrap_or(data);
    let mut out = Vec::with_capacity(event.len() + 16);
    let mut data_written = false;
    for line in lines(event).filter(|line| !line.is_empty()) {
        if data_value(line).is_some() {
            if !std::mem::replace(&mut data_written, true) {
                for piece in data.split(|b| *b == b'\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(piece);
                    out.push(b'\n');
                }
            }
            continue;
        }
        match redact_secrets(line, provider) {
            Some(line) => out.extend_from_slice(&line),
            None => out.extend_from_slice(line),
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    ErrorEventAs::Redacted(out)
}

/// Whether an event's data carries no choice: `"choices": []` (the usage
/// chunk of `include_usage`), `"choices": null`, or no `choices` at all.
/// A usage chunk in any of these shapes carries nothing else a client
/// reads; one with a choice in it is content and goes out as it came.
pub(super) fn carries_no_choice(data: &[u8]) -> bool {
    static CHOICES: LazyLock<memchr::memmem::Finder<'static>> =
        LazyLock::new(|| memchr::memmem::Finder::new(b"\"choices\""));
    let Some(at) = CHOICES.find(data) else {
        return true;
    };
    let mut rest = data[at + b"\"choices\"".len()..]
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace());
    if rest.next() != Some(b':') {
        return false;
    }
    match rest.next() {
        Some(b'[') => rest.next() == Some(b']'),
        Some(b'n') => rest.take(3).eq(*b"ull"),
        _ => false,
    }
}

/// Where the first event in `events` starts: the first block with a
/// `data` field line. A block without one (comments, `id:`, `retry:`,
/// `event:` alone) dispatches no event in SSE.
pub(super) fn first_event_start(events: &[u8]) -> Option<usize> {
    // The usual frame, checked on every read, costs one comparison.
    if events.starts_with(b"data:") {
        return Some(0);
    }
    let line = lines(events).find(|line| data_value(line).is_some())?;
    let line_start = line.as_ptr() as usize - events.as_ptr() as usize;
    Some(event_start(events, line_start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_carries_no_choice_when_choices_are_empty_null_or_absent() {
        assert!(carries_no_choice(br#"{"choices": [ ],"usage":{}}"#));
        assert!(carries_no_choice(br#"{"choices":null,"usage":{}}"#));
        assert!(carries_no_choice(br#"{"id":"x","usage":{}}"#));
        assert!(!carries_no_choice(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{}}"#
        ));
        assert!(!carries_no_choice(br#"{"choices":nothing}"#));
        // A quoted mention inside a string is not the key.
        assert!(carries_no_choice(
            br#"{"usage":{},"note":"\"choices\": [1]"}"#
        ));
    }

    /// `[DONE]` as the SDKs read it: an event whose data begins with it.
    #[test]
    fn done_is_an_event_whose_data_begins_with_it() {
        assert_eq!(find_done(b"data: [DONE]\n\n"), Some(0));
        assert_eq!(find_done(b"data:[DONE]\n\n"), Some(0));
        assert_eq!(find_done(b"data: {}\n\ndata:[DONE]\r\n\r\n"), Some(10));
        assert_eq!(find_done(b"data: {}\n\ndata: [DONE]"), Some(10));
        // Whatever follows on its line (`startswith` in the SDKs).
        assert_eq!(find_done(b"data: [DONE] \n\n"), Some(0));
        assert_eq!(find_done(b"data: [DONE]x\n\n"), Some(0));
        // Its data lines after the first, and field lines before it.
        assert_eq!(find_done(b"data: [DONE]\ndata: x\n\n"), Some(0));
        assert_eq!(find_done(b"id: 9\nevent: x\ndata: [DONE]\n\n"), Some(15));
        // Mentions of [DONE] that are not the event.
        assert_eq!(find_done(br#"data: {"c":"[DONE]"}\n\n"#), None);
        assert_eq!(find_done(b"xdata: [DONE]\n\n"), None);
        assert_eq!(find_done(b"data:  [DONE]\n\n"), None);
        assert_eq!(find_done(b": [DONE]\n\ndata: [DONE]\n\n"), Some(10));
        // An event's second data line: its data begins with the first.
        assert_eq!(find_done(b"data: {\"x\":1}\ndata: [DONE]\n\n"), None);
        assert_eq!(
            find_done(b"data: {\"x\":1}\r\ndata: [DONE]\r\n\r\ndata: [DONE]\n\n"),
            Some(31)
        );
    }
}
