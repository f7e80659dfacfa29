//! What a relayed stream's events mean to the gateway: where `[DONE]` is,
//! which event is the provider's error (and that event without the
//! provider's key), whether a block is an event at all, whether a chunk
//! is the `include_usage` usage chunk, and where the answer's first chunk
//! comes after an opening prompt-filter chunk.

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

/// A provider's own error event among `events`: one whose data has an
/// `error` member (`data: {"error":{...}}`), or one named `error`
/// (`event: error`); and the answer's first event, at `answer_at` (given
/// before the answer has begun), when that is AI/ML API's or Agentsflare's
/// error document (`{"statusCode":429,"message":…}`, as a 2xx body in
/// that shape is an error). The error, and where its event starts and
/// ends.
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
    let from = ERROR_WORD.find(events)?;
    // Providers name no events in a chat stream: the search for a name
    // runs only where `error` is (a text that mentions it) and finds none.
    let error_member = ERROR_KEY.find(&events[from.saturating_sub(1)..]).is_some();
    if !error_member && EVENT_FIELD.find(events).is_none() {
        return None;
    }
    let mut last_event = None;
    lines(events)
        .filter(|line| data_value(line).is_some())
        .find_map(|line| {
            let (start, data) = event_data(events, line);
            // An event of several data lines is read once.
            if last_event.replace(start) == Some(start) {
                return None;
            }
            let line_end = line.as_ptr() as usize - events.as_ptr() as usize + line.len();
            let end = event_end(events, line_end).unwrap_or(events.len());
            let data = data.trim_ascii();
            let err = error_member
                .then(|| super::provider_errors::stream_error(data, provider))
                .flatten()
                .or_else(|| {
                    named_error(&events[start..end])
                        .then(|| super::provider_errors::named_error_event(data, provider))
                })?;
            Some((err, start..end))
        })
}

/// The event at `at` in `events` when it is AI/ML API's or Agentsflare's
/// error document, read from its first data line's first member (a chunk
/// begins with another), so the stream's first event pays a few
/// comparisons for it. Only the answer's first event is looked at: a
/// search of every read for the document's name would cost as much as
/// the relay's other searches together, and later in a stream the
/// document passes as it came.
fn status_document_at(
    events: &[u8],
    at: usize,
    provider: &crate::config::Provider,
) -> Option<(StreamError, Range<usize>)> {
    // The usual event begins with its data line: its first member is
    // looked at before the line's end is looked for.
    if let Some(data) = events[at..].strip_prefix(b"data:")
        && !opens_status_document(data)
    {
        return None;
    }
    let line = lines(&events[at..]).find(|line| data_value(line).is_some())?;
    let data = data_value(line)?.trim_ascii();
    if !opens_status_document(data) {
        return None;
    }
    let found = super::provider_errors::status_document_event(data, provider)?;
    let line_end = line.as_ptr() as usize - events.as_ptr() as usize + line.len();
    let end = event_end(events, line_end).unwrap_or(events.len());
    Some((found, at..end))
}

/// Whether `data` begins with the first member of AI/ML API's or
/// Agentsflare's error document (`message` or `statusCode`).
fn opens_status_document(data: &[u8]) -> bool {
    data.trim_ascii_start()
        .strip_prefix(b"{")
        .map(<[u8]>::trim_ascii_start)
        .is_some_and(|member| {
            member.starts_with(b"\"statusCode\"") || member.starts_with(b"\"message\"")
        })
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

/// Without its quotes, as `statusCode` above.
static PROMPT_FILTER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"prompt_filter_results"));

/// Where the answer's first event starts in `events` (a block that begins
/// with an event): past the opening chunks that carry only the provider's
/// prompt filter results (Azure's shape, which Agentsflare sends before
/// its first token: no choice, `created: 0`, `model: ""`). `None` when
/// every event in `events` is one. Such a chunk says nothing of the
/// answer: a failure after it is still a failure before the answer began.
/// Each event is looked at alone, so an answer that begins at once costs
/// one search of its first event.
pub(super) fn answer_start(events: &[u8]) -> Option<usize> {
    let mut start = 0;
    loop {
        start += first_event_start(&events[start..])?;
        if opens_with_a_choice(&events[start..]) {
            return Some(start);
        }
        let end = event_end(events, start).unwrap_or(events.len());
        let event = &events[start..end];
        if PROMPT_FILTER.find(event).is_none() {
            return Some(start);
        }
        let line = lines(event).find(|line| data_value(line).is_some())?;
        let (_, data) = event_data(event, line);
        if !is_prompt_filter_chunk(data.trim_ascii()) {
            return Some(start);
        }
        start = end;
    }
}

/// Whether the event that `event` begins with opens its first list with a
/// choice (`"choices":[{`, the answer's chunk, whose only lists are
/// `choices` and what is inside it): one `memchr` and a look back at the
/// list's name decide nearly every event. `false` sends the event to the
/// whole check: an empty `choices` (the filter's chunk, or a usage
/// chunk), or a first list of another name (`prompt_filter_results`
/// written before `choices`).
fn opens_with_a_choice(event: &[u8]) -> bool {
    let Some(at) = memchr::memchr(b'[', event) else {
        return false;
    };
    let named_choices = event[..at]
        .trim_ascii_end()
        .strip_suffix(b":")
        .is_some_and(|name| name.trim_ascii_end().ends_with(b"\"choices\""));
    named_choices && !event[at + 1..].trim_ascii_start().starts_with(b"]")
}

/// A chunk that carries the prompt filter's results and nothing of the
/// answer: a JSON object with `prompt_filter_results`, no choice, and no
/// usage or error (`null` aside).
fn is_prompt_filter_chunk(data: &[u8]) -> bool {
    let mut filter_results = false;
    let mut answer = false;
    let scanned = super::json_scan::scan_object(data, |key, span| match key {
        b"prompt_filter_results" => filter_results = true,
        b"choices" | b"usage" | b"error" => {
            let value = data[span].trim_ascii();
            let empty = matches!(value, b"null" | b"[]")
                || value
                    .strip_prefix(b"[")
                    .and_then(|v| v.strip_suffix(b"]"))
                    .is_some_and(|inside| inside.trim_ascii().is_empty());
            answer |= !empty;
        }
        _ => {}
    });
    scanned.is_ok() && filter_results && !answer
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

    /// Azure's and Agentsflare's opening chunk comes before the answer's
    /// first event; anything with an answer in it does not.
    #[test]
    fn the_answer_starts_after_opening_prompt_filter_chunks() {
        let filter = "data: {\"id\":\"\",\"object\":\"\",\"created\":0,\"model\":\"\",\"choices\":[],\
            \"prompt_filter_results\":[{\"prompt_index\":0,\"content_filter_results\":{}}]}\n\n";
        let content = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert_eq!(answer_start(content.as_bytes()), Some(0));
        assert_eq!(answer_start(filter.as_bytes()), None);
        assert_eq!(answer_start(format!("{filter}{filter}").as_bytes()), None);
        assert_eq!(
            answer_start(format!("{filter}{content}").as_bytes()),
            Some(filter.len())
        );
        assert_eq!(
            answer_start(format!("{filter}data: [DONE]\n\n").as_bytes()),
            Some(filter.len())
        );
        // Results beside a choice, usage or an error: part of the answer.
        for data in [
            r#"{"choices":[{"delta":{}}],"prompt_filter_results":[]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3},"prompt_filter_results":[]}"#,
            r#"{"error":{"message":"x"},"prompt_filter_results":[]}"#,
            r#"{"choices":[],"prompt_filter_results":[]"#,
            r#"{"choices":[],"note":"\"prompt_filter_results\""}"#,
        ] {
            assert_eq!(
                answer_start(format!("data: {data}\n\n").as_bytes()),
                Some(0),
                "{data}"
            );
        }
        // Whatever the order of the members.
        for data in [
            r#"{"id":"","prompt_filter_results":[{"prompt_index":0}],"choices":[]}"#,
            r#"{"prompt_filter_results":[],"created":0,"choices":[ ]}"#,
        ] {
            let events = format!("data: {data}\n\n{content}");
            assert_eq!(
                answer_start(events.as_bytes()),
                Some(data.len() + 8),
                "{data}"
            );
        }
        // `null` usage and choices are no answer.
        let nulls = r#"data: {"choices":null,"usage":null,"prompt_filter_results":[]}"#;
        assert_eq!(answer_start(format!("{nulls}\n\n").as_bytes()), None);
    }
}
