//! Azure's opening chunks, which Agentsflare passes on: a stream may begin
//! with chunks that carry only the prompt filter's results (no choice,
//! `created: 0`, `model: ""`) before the answer's first token. They say
//! nothing of the answer, so the relay finds where the answer begins
//! past them: a failure before that is still a failure before the answer
//! began.

use super::sse_events::first_event_start;
use super::sse_lines::{data_value, event_data, event_end, lines};
use std::sync::LazyLock;

/// Searched for without its quotes: a needle with `"` in it makes the
/// search stop at every quote of the JSON around it.
static PROMPT_FILTER: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"prompt_filter_results"));

/// Where the answer's first event starts in `events` (a block that begins
/// with an event): past the opening chunks that carry only prompt filter
/// results. `None` when every event in `events` is one. Each event is
/// looked at alone, so an answer that begins at once costs a look at its
/// first list.
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
        // Anything not read as an opening chunk is the answer's.
        let Some(line) = lines(event).find(|line| data_value(line).is_some()) else {
            return Some(start);
        };
        let (_, data) = event_data(event, line);
        if !is_prompt_filter_chunk(data.trim_ascii()) {
            return Some(start);
        }
        start = end;
    }
}

/// Whether the event that `event` begins with opens its first list, on
/// its first line, with a choice (`"choices":[{`: the answer's chunk,
/// whose only lists are `choices` and what is inside it): one `memchr`
/// and a look back at the list's name decide nearly every event. `false`
/// sends the event to the whole check: an empty `choices` (the filter's
/// chunk, or a usage chunk), a first list of another name
/// (`prompt_filter_results` written before `choices`), or none on the
/// first line (a list only in a later event proves nothing of this one).
fn opens_with_a_choice(event: &[u8]) -> bool {
    let Some(at) = memchr::memchr(b'[', event) else {
        return false;
    };
    let before = &event[..at];
    if memchr::memchr2(b'\n', b'\r', before).is_some() {
        return false;
    }
    let named_choices = before
        .trim_ascii_end()
        .strip_suffix(b":")
        .is_some_and(|name| name.trim_ascii_end().ends_with(b"\"choices\""));
    // The list's first item, on the same line: one on a later line (the
    // data split over `data:` lines) is left to the whole check.
    let after = &event[at + 1..];
    let item = &after[after
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()..];
    named_choices && !matches!(item.first(), None | Some(b']' | b'\n' | b'\r'))
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

    /// A filter chunk without a list of its own on its first line is not
    /// taken for the answer because of the next event's choice.
    #[test]
    fn a_choice_in_the_next_event_says_nothing_of_this_one() {
        let filter = "data: {\"choices\":null,\"prompt_filter_results\":{}}\n\n";
        let content = "data: {\"choices\":[{\"delta\":{}}]}\n\n";
        let events = format!("{filter}{content}");
        assert_eq!(answer_start(events.as_bytes()), Some(filter.len()));
        // CR LF line ends and `data:` without its space.
        let crlf = "data:{\"choices\":[],\"prompt_filter_results\":[]}\r\n\r\n";
        let events = format!("{crlf}{content}");
        assert_eq!(answer_start(events.as_bytes()), Some(crlf.len()));
    }
}
