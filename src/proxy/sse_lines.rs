//! Lines and event boundaries in SSE text. A line ends in CRLF, LF or a
//! bare CR (all three are SSE), and an event ends at a blank line: two line
//! ends in a row, in any mix.

use std::borrow::Cow;

/// Length of the line end starting at `at` (2 for CRLF, 1 for LF or a bare
/// CR, 0 for none). A CR as the last byte counts as a bare CR: were an LF
/// to follow in the next read, it would end an empty line, which ends no
/// event that had not ended already.
pub fn line_end_len(text: &[u8], at: usize) -> usize {
    match &text[at.min(text.len())..] {
        [b'\r', b'\n', ..] => 2,
        [b'\n' | b'\r', ..] => 1,
        _ => 0,
    }
}

/// The lines of `text`, without their line ends (the last one may be
/// unterminated).
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut from = Some(0);
    std::iter::from_fn(move || {
        let start = from?;
        match memchr::memchr2(b'\n', b'\r', &text[start..]) {
            Some(found) => {
                let end = start + found;
                from = Some(end + line_end_len(text, end));
                Some(&text[start..end])
            }
            None => {
                from = None;
                (start < text.len()).then(|| &text[start..])
            }
        }
    })
}

/// Index just past the last blank line in `text`: everything before it is
/// whole events.
pub fn last_event_end(text: &[u8]) -> Option<usize> {
    // The common case, a read that ends on an event boundary, costs nothing.
    if text.ends_with(b"\n\n") {
        return Some(text.len());
    }
    if memchr::memchr(b'\r', text).is_none() {
        return memchr::memmem::rfind(text, b"\n\n").map(|i| i + 2);
    }
    // With CRs, walk the line ends: a blank line is one that starts where
    // the previous line end stopped.
    let mut last = None;
    let mut previous_end = None;
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'\n', b'\r', &text[at..]) {
        let start = at + found;
        let end = start + line_end_len(text, start);
        if previous_end == Some(start) {
            last = Some(end);
        }
        previous_end = Some(end);
        at = end;
    }
    last
}

/// Where the line end just before `line_start` begins (`line_start` is at
/// the start of a line that is not the first).
fn line_end_before(text: &[u8], line_start: usize) -> usize {
    if line_start >= 2 && &text[line_start - 2..line_start] == b"\r\n" {
        line_start - 2
    } else {
        line_start - 1
    }
}

/// Where the event holding the line that starts at `line_start` begins:
/// after the blank line before it, or at the start of `text` (a frame
/// holds whole events only), so its other field lines (`id:`, `event:`)
/// go with it.
pub fn event_start(text: &[u8], line_start: usize) -> usize {
    let mut at = line_start;
    while at > 0 {
        let previous_end = line_end_before(text, at);
        let previous_start =
            memchr::memrchr2(b'\n', b'\r', &text[..previous_end]).map_or(0, |i| i + 1);
        if previous_start == previous_end {
            return at;
        }
        at = previous_start;
    }
    0
}

/// Where the event whose line ends at `line_end` ends: past the blank line
/// after it. `None` when no blank line follows in `text`.
pub fn event_end(text: &[u8], line_end: usize) -> Option<usize> {
    let mut at = line_end;
    loop {
        let found = at + memchr::memchr2(b'\n', b'\r', &text[at..])?;
        at = found + line_end_len(text, found);
        match line_end_len(text, at) {
            0 => {}
            blank => return Some(at + blank),
        }
    }
}

/// Where the first event longer than `limit` starts in `text`, which holds
/// whole events, each with the blank line that ends it (counted).
pub fn first_event_over(text: &[u8], limit: usize) -> Option<usize> {
    let mut start = 0;
    while start < text.len() {
        let end = event_end(text, start).unwrap_or(text.len());
        if end - start > limit {
            return Some(start);
        }
        start = end;
    }
    None
}

/// The value of a `data` field line (`data` alone is an empty one), or
/// `None` for any other line.
pub fn data_value(line: &[u8]) -> Option<&[u8]> {
    if line == b"data" {
        return Some(b"");
    }
    let value = line.strip_prefix(b"data:")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// The data of the event that holds `line`, a `data` line sliced from
/// `text`, and where that event starts. When `line` is the event's only
/// data line (every provider's case) its value is borrowed; otherwise the
/// values of all its data lines are joined with LF, as SSE dispatches them
/// (a JSON document may span them).
pub fn event_data<'a>(text: &'a [u8], line: &'a [u8]) -> (usize, Cow<'a, [u8]>) {
    let line_start = line.as_ptr() as usize - text.as_ptr() as usize;
    let line_end = line_start + line.len();
    let own = data_value(line).unwrap_or_default();
    // The common case, checked on the bytes around the line (no search):
    // a blank line (or the start) before it, and one after it.
    if ends_blank(&text[..line_start]) && starts_blank(&text[line_end..]) {
        return (line_start, Cow::Borrowed(own));
    }
    let start = event_start(text, line_start);
    let end = event_end(text, line_end).unwrap_or(text.len());
    if lines(&text[start..end])
        .filter_map(data_value)
        .nth(1)
        .is_none()
    {
        return (start, Cow::Borrowed(own));
    }
    let mut joined = Vec::with_capacity(end - start);
    for (i, value) in lines(&text[start..end]).filter_map(data_value).enumerate() {
        if i > 0 {
            joined.push(b'\n');
        }
        joined.extend_from_slice(value);
    }
    (start, Cow::Owned(joined))
}

/// `text` without the line end it ends with, if it ends with one.
fn strip_line_end_suffix(text: &[u8]) -> Option<&[u8]> {
    text.strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .or_else(|| text.strip_suffix(b"\r"))
}

/// `text` (everything before a line) ends with a blank line, or is empty:
/// the line starts an event.
fn ends_blank(text: &[u8]) -> bool {
    match strip_line_end_suffix(text) {
        None => text.is_empty(),
        Some(rest) => rest.is_empty() || rest.ends_with(b"\n") || rest.ends_with(b"\r"),
    }
}

/// `text` (everything after a line) starts with the line's end and a blank
/// line, or holds no further line: the line ends its event.
fn starts_blank(text: &[u8]) -> bool {
    let rest = match line_end_len(text, 0) {
        0 => return text.is_empty(),
        len => &text[len..],
    };
    rest.is_empty() || line_end_len(rest, 0) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_measured_with_their_blank_line() {
        assert_eq!(first_event_over(b"", 0), None);
        assert_eq!(first_event_over(b"data: a\n\n", 9), None);
        assert_eq!(first_event_over(b"data: a\n\n", 8), Some(0));
        let three = b"data: a\n\ndata: bbb\n\n: c\n\n";
        assert_eq!(first_event_over(three, 11), None);
        assert_eq!(first_event_over(three, 10), Some(9));
        assert_eq!(first_event_over(three, 5), Some(0));
        assert_eq!(
            first_event_over(b"id: 1\r\ndata: bb\r\n\r\ndata: a\r\r", 18),
            Some(0)
        );
        assert_eq!(
            first_event_over(b"data: a\r\rid: 1\r\ndata: bb\r\n\r\n", 18),
            Some(9)
        );
    }

    const ENDINGS: [&str; 3] = ["\n", "\r\n", "\r"];

    #[test]
    fn lines_split_at_every_kind_of_line_end() {
        let text = b"a\nb\r\nc\rd\r\re";
        assert_eq!(
            lines(text).collect::<Vec<_>>(),
            [&b"a"[..], b"b", b"c", b"d", b"", b"e"]
        );
        assert_eq!(lines(b"a\n").collect::<Vec<_>>(), [&b"a"[..]]);
        assert_eq!(lines(b"").count(), 0);
    }

    #[test]
    fn the_last_blank_line_ends_the_whole_events() {
        for eol in ENDINGS {
            let text = format!("data: a{eol}{eol}data: b{eol}{eol}data: c");
            let end = last_event_end(text.as_bytes()).unwrap();
            assert_eq!(&text[end..], "data: c", "{eol:?}");
            assert_eq!(last_event_end(format!("data: c{eol}").as_bytes()), None);
        }
        // Mixed line ends still make a blank line.
        assert_eq!(last_event_end(b"data: a\r\n\nx"), Some(10));
        assert_eq!(last_event_end(b"data: a\n\rx"), Some(9));
        // A CR then LF is one line end, not a blank line.
        assert_eq!(last_event_end(b"data: a\r\nx"), None);
    }

    #[test]
    fn an_events_data_lines_are_joined() {
        for eol in ENDINGS {
            let text = format!(
                "data: one{eol}{eol}id: 3{eol}data: {{\"a\":{eol}event: x{eol}data:1}}{eol}data{eol}{eol}data: last"
            );
            let text = text.as_bytes();
            let line = |prefix: &str| {
                let at = memchr::memmem::find(text, prefix.as_bytes()).unwrap();
                let len = memchr::memchr2(b'\n', b'\r', &text[at..]).unwrap_or(text.len() - at);
                &text[at..at + len]
            };
            // The only data line of its event: borrowed, one space dropped.
            let (start, data) = event_data(text, line("data: one"));
            assert_eq!((start, &*data), (0, &b"one"[..]));
            assert!(matches!(data, Cow::Borrowed(_)));
            // Any of an event's data lines gives the whole event's data.
            for first in ["data: {", "data:1}"] {
                let (start, data) = event_data(text, line(first));
                assert_eq!(start, 9 + 2 * eol.len(), "{eol:?}");
                assert_eq!(&*data, b"{\"a\":\n1}\n", "{eol:?}");
            }
            // An event not yet ended by a blank line ends with the text.
            assert_eq!(&*event_data(text, line("data: last")).1, b"last");
        }
    }

    #[test]
    fn blank_lines_around_a_line_are_seen_in_every_mix_of_line_ends() {
        for before in [
            "",
            "\n",
            "\r",
            "\r\n",
            "a\n\n",
            "a\r\r",
            "a\r\n\r\n",
            "a\n\r\n",
            "a\r\r\n",
        ] {
            assert!(ends_blank(before.as_bytes()), "{before:?}");
        }
        for before in ["a", "a\n", "a\r\n", "a\r", "\n\na\n"] {
            assert!(!ends_blank(before.as_bytes()), "{before:?}");
        }
        for after in ["", "\n", "\r", "\r\n", "\n\n", "\r\r", "\r\n\r\n", "\n\rx"] {
            assert!(starts_blank(after.as_bytes()), "{after:?}");
        }
        for after in ["x", "\nid: 1\n\n", "\r\ndata: b\r\n"] {
            assert!(!starts_blank(after.as_bytes()), "{after:?}");
        }
    }

    #[test]
    fn an_event_is_found_whole_around_one_of_its_lines() {
        for eol in ENDINGS {
            let text = format!("data: a{eol}{eol}id: 7{eol}data: u{eol}{eol}data: b{eol}{eol}");
            let line_start = text.find("data: u").unwrap();
            let start = event_start(text.as_bytes(), line_start);
            let end = event_end(text.as_bytes(), line_start + "data: u".len()).unwrap();
            assert_eq!(
                &text[start..end],
                format!("id: 7{eol}data: u{eol}{eol}"),
                "{eol:?}"
            );
            assert_eq!(event_end(format!("data: u{eol}").as_bytes(), 7), None);
        }
    }
}
